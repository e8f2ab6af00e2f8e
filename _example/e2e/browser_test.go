package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatrelay/chat/internal/demotest"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// chromiumPath finds the browser, or skips the test (fails with
// CHAT_REQUIRE_BROWSER=1).
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHAT_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	if os.Getenv("CHAT_REQUIRE_BROWSER") == "1" {
		t.Fatal("no Chromium found (chromium on $PATH, /usr/bin/chromium or $CHAT_CHROMIUM) and CHAT_REQUIRE_BROWSER=1")
	}
	t.Skip("no Chromium found (apt-get install chromium, or set CHAT_CHROMIUM); set CHAT_REQUIRE_BROWSER=1 to fail instead")
	return ""
}

// browser starts a headless Chromium with a fresh profile and returns the
// context of its first tab; page exceptions and console errors fail the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	path := chromiumPath(t)
	profile := t.TempDir() // removed after the browser has exited (cleanups run last-in first-out)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("force-color-profile", "srgb"),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(900, 600),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil { // start the browser, with no timeout
		t.Fatalf("start %s: %v", path, err)
	}
	return ctx
}

// tab opens a new tab in the browser of ctx (the first one uses ctx's own
// tab) and watches its console: uncaught exceptions and console errors fail
// the test, except network errors when allowNetErrors is set (a page whose
// server is down logs its failed WebSocket attempts).
func tab(t *testing.T, browserCtx context.Context, name string, first, allowNetErrors bool) context.Context {
	t.Helper()
	ctx := browserCtx
	if !first {
		var cancel context.CancelFunc
		ctx, cancel = chromedp.NewContext(browserCtx)
		t.Cleanup(cancel)
	}
	cctx, stop := context.WithCancel(ctx)
	messages := chromedp.Console(cctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			bad := m.IsException() || m.Type == chromedp.ConsoleError
			if bad && !(allowNetErrors && m.Source == "network") {
				t.Errorf("%s: browser console %s: %s (%s:%d)", name, m.Type, m.Text, m.URL, m.Line)
			} else {
				t.Logf("%s: browser console %s %s: %s", name, m.Source, m.Type, m.Text)
			}
		}
	})
	t.Cleanup(func() { stop(); wg.Wait() })
	// A fixed viewport, so that screenshots are 900×600 CSS pixels.
	do(t, ctx, name+": viewport", chromedp.EmulateViewport(900, 600))
	return ctx
}

// poll waits for a JavaScript condition on the page, without fixed sleeps.
func poll(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second)))
	if err != nil {
		state, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#state")?.textContent ?? "(no page)"`))
		errs, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#errors")?.innerText ?? ""`))
		t.Fatalf("%s: %v (connection state %q, errors shown %q)", what, err, state, errs)
	}
}

func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// shown is a message as the page renders it.
type shown struct {
	ID, User, Instance, Text, Via string
	HTMLChildren                  int
}

func messagesOf(t *testing.T, ctx context.Context, room string) []shown {
	t.Helper()
	js := fmt.Sprintf(`[...document.querySelectorAll('[data-testid=panel][data-room=%q] [data-testid=message]')].map(li => ({
		ID: li.dataset.id, User: li.dataset.user, Instance: li.dataset.instance,
		Text: li.querySelector('[data-testid=text]').textContent,
		Via: li.querySelector('[data-testid=via]').textContent,
		HTMLChildren: li.querySelector('[data-testid=text]').children.length,
	}))`, room)
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](js))
	if err != nil {
		t.Fatal(err)
	}
	var out []shown
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	return out
}

func countExpr(room string) string {
	return fmt.Sprintf(`document.querySelectorAll('[data-testid=panel][data-room=%q] [data-testid=message]').length`, room)
}

func screenshot(t *testing.T, ctx context.Context, path string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(png))
}

// TestBrowserTwoInstances is the demo as a person uses it: the demo runs two
// instances on one embedded Redis; page 1 is opened on the first, page 2 on
// the second; both join one room and send one message each. Both pages must
// show both messages in the same order, each tagged with the instance that
// relayed it from its sender.
func TestBrowserTwoInstances(t *testing.T) {
	ctx := browser(t)
	addr1, addr2 := demotest.FreeAddr(t), demotest.FreeAddr(t)
	demotest.Start(t, "two-instances", []string{addr1, addr2})
	inst1, inst2 := instanceID(t, "http://"+addr1), instanceID(t, "http://"+addr2)
	if inst1 == inst2 {
		t.Fatalf("both instances report %q", inst1)
	}

	page1, page2, _ := twoTabs(t, ctx)

	room := fmt.Sprintf("e2e-%06x", rand.IntN(1<<24))
	pages := []struct {
		ctx        context.Context
		name, user string
		addr, inst string
		text       string
	}{
		{page1, "page1", "alice", addr1, inst1, `hi from alice <b>not bold</b> & ünïcode`},
		{page2, "page2", "bob", addr2, inst2, "hello alice, bob here"},
	}
	for _, p := range pages {
		enterRoom(t, p.ctx, p.name, p.addr, p.user, room)
		shownInst, err := chromedp.Run(p.ctx, chromedp.Text(chromedp.ID("instance")))
		if err != nil || shownInst != p.inst {
			t.Fatalf("%s: page shows instance %q (%v), /info says %q", p.name, shownInst, err, p.inst)
		}
	}
	for _, p := range pages {
		poll(t, p.ctx, p.name+": joined "+room, fmt.Sprintf(
			`document.querySelector('[data-testid=tab][data-room=%q][data-joined=true][aria-selected=true]') !== null`, room))
	}

	// One message from each page, the second after the first has arrived.
	for i, p := range pages {
		do(t, p.ctx, p.name+": type and send", chromedp.SendKeys(chromedp.ID("text"), p.text+kb.Enter))
		for _, q := range pages {
			poll(t, q.ctx, fmt.Sprintf("%s: message %d shown", q.name, i+1), fmt.Sprintf(`%s >= %d`, countExpr(room), i+1))
		}
	}

	got1, got2 := messagesOf(t, page1, room), messagesOf(t, page2, room)
	t.Logf("page1 shows %+v", got1)
	t.Logf("page2 shows %+v", got2)
	if len(got1) != 2 || len(got2) != 2 {
		t.Fatalf("want 2 messages on each page, got %d and %d", len(got1), len(got2))
	}
	for i, p := range pages {
		for j, got := range [][]shown{got1, got2} {
			m := got[i]
			if m.User != p.user || m.Text != p.text || m.Instance != p.inst || m.Via != "via "+p.inst || m.ID == "" {
				t.Errorf("page%d, message %d: %+v; want user %q, text %q, relayed via %q", j+1, i+1, m, p.user, p.text, p.inst)
			}
			if m.HTMLChildren != 0 {
				t.Errorf("page%d, message %d: the text was rendered as HTML", j+1, i+1)
			}
		}
		if got1[i].ID != got2[i].ID {
			t.Errorf("message %d: ids differ between the pages: %q vs %q", i+1, got1[i].ID, got2[i].ID)
		}
	}

	dir := t.ArtifactDir()
	for _, p := range pages {
		screenshot(t, p.ctx, filepath.Join(dir, p.name+".png"))
	}
	if out := os.Getenv("CHAT_DEMO_SCREENSHOT"); out != "" {
		screenshot(t, page1, out)
	}
	// An error frame is shown to the user: 2100 × "é" fits the input's
	// maxlength (UTF-16 units) but is 4200 bytes, over the 4096-byte limit.
	do(t, page2, "page2: send a too large message",
		chromedp.SetValue(chromedp.ID("text"), strings.Repeat("é", 2100)),
		chromedp.SendKeys(chromedp.ID("text"), kb.Enter))
	poll(t, page2, "page2: too_large error shown",
		`[...document.querySelectorAll('#errors [data-testid=error]')].some(e => e.textContent.startsWith("too_large"))`)
	if n := messagesOf(t, page1, room); len(n) != 2 {
		t.Errorf("page1 shows %d messages after the refused one, want 2", len(n))
	}

	if !strings.Contains(strings.Join(os.Args, " "), "-test.artifacts") {
		t.Logf("screenshots are deleted after the test; run go test -artifacts -outputdir DIR to keep them")
	}
}

// TestBrowserReconnect stops the server under an open page and starts it
// again on the same port: the page shows "reconnecting", comes back by
// itself, rejoins its room, and chatting works again. The demo's embedded
// Redis restarts empty with it, so the room begins a new epoch: the rejoin
// cannot be recovered (recovered:false) and the page says messages may be
// missing. (TestBrowserStopStartRecovers has Redis outlive the server.)
func TestBrowserReconnect(t *testing.T) {
	ctx := browser(t)
	addr := demotest.FreeAddr(t)
	d := demotest.Start(t, "first run", []string{addr})
	tctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	page := tab(t, tctx, "page", true, true)

	room := fmt.Sprintf("e2e-%06x", rand.IntN(1<<24))
	joined := fmt.Sprintf(`document.querySelector('[data-testid=tab][data-room=%q][data-joined=true]') !== null`, room)
	do(t, page, "open", chromedp.Navigate("http://"+addr+"/"))
	poll(t, page, "connected", `document.querySelector("#state").dataset.state === "open"`)
	do(t, page, "join", chromedp.SendKeys(chromedp.ID("room"), room+kb.Enter))
	poll(t, page, "joined", joined)
	do(t, page, "send before", chromedp.SendKeys(chromedp.ID("text"), "before the restart"+kb.Enter))
	poll(t, page, "first message", countExpr(room)+` === 1`)

	if err := d.Stop(); err != nil {
		t.Fatalf("stop demo: %v", err)
	}
	poll(t, page, "reconnecting after close 1001", `document.querySelector("#state").dataset.state === "reconnecting"`)
	demotest.Start(t, "second run", []string{addr})
	poll(t, page, "connected again", `document.querySelector("#state").dataset.state === "open"`)
	poll(t, page, "rejoined", joined)
	poll(t, page, "resumed notice", fmt.Sprintf(
		`document.querySelector('[data-testid=panel][data-room=%q] [data-testid=system].warn') !== null`, room))
	do(t, page, "send after", chromedp.SendKeys(chromedp.ID("text"), "after the restart"+kb.Enter))
	poll(t, page, "second message", countExpr(room)+` === 2`)
	screenshot(t, page, filepath.Join(t.ArtifactDir(), "reconnected.png"))
}

// membersOf returns the member list a page shows for room, in its order.
func membersOf(t *testing.T, ctx context.Context, room string) []string {
	t.Helper()
	got, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](fmt.Sprintf(
		`[...document.querySelectorAll('[data-testid=members][data-room=%q] [data-testid=member]')].map(li => li.textContent)`, room)))
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// membersExpr is true when the page's member list of room shows exactly
// users (sorted), and is up to date.
func membersExpr(room string, users ...string) string {
	want, _ := json.Marshal(users)
	return fmt.Sprintf(`(m => m !== null && m.dataset.stale === "false" &&
		JSON.stringify([...m.querySelectorAll('[data-testid=member]')].map(li => li.dataset.user)) === %q)(
		document.querySelector('[data-testid=members][data-room=%q]'))`, want, room)
}

// TestBrowserMemberList: two pages on two instances of the demo join a
// room; each page's member list shows both users (presence across
// instances), and the first page says when the second one joined. When the
// second page is closed, the first one's list drops its user and says so.
func TestBrowserMemberList(t *testing.T) {
	ctx := browser(t)
	addr1, addr2 := demotest.FreeAddr(t), demotest.FreeAddr(t)
	demotest.Start(t, "two-instances", []string{addr1, addr2})
	page1, page2, tab2 := twoTabs(t, ctx)

	room := fmt.Sprintf("e2e-%06x", rand.IntN(1<<24))
	pages := []struct {
		ctx              context.Context
		name, user, addr string
	}{
		{page1, "page1", "alice", addr1},
		{page2, "page2", "bob", addr2},
	}
	// One page after the other: alice is in the room when bob comes.
	for _, p := range pages {
		enterRoom(t, p.ctx, p.name, p.addr, p.user, room)
		poll(t, p.ctx, p.name+": joined "+room, fmt.Sprintf(
			`document.querySelector('[data-testid=tab][data-room=%q][data-joined=true][aria-selected=true]') !== null`, room))
	}
	for _, p := range pages {
		poll(t, p.ctx, p.name+": both users in the member list", membersExpr(room, "alice", "bob"))
	}
	notice := func(text string) string {
		return fmt.Sprintf(`[...document.querySelectorAll('[data-testid=panel][data-room=%q] [data-testid=system]')].some(li => li.textContent === %q)`, room, text)
	}
	poll(t, page1, "page1: bob's arrival noticed", notice("bob joined"))
	screenshot(t, page1, filepath.Join(t.ArtifactDir(), "members.png"))

	// Closing page2 closes its WebSocket: bob's last connection in the room.
	if err := chromedp.Cancel(tab2); err != nil {
		t.Fatalf("close page2: %v", err)
	}
	poll(t, page1, "page1: bob dropped from the member list", membersExpr(room, "alice"))
	poll(t, page1, "page1: bob's departure noticed", notice("bob left"))
	if got := membersOf(t, page1, room); len(got) != 1 || got[0] != "alice" {
		t.Errorf("page1 lists %q, want [alice]", got)
	}
}

// twoTabs opens the test's two pages in the browser of ctx, each bounded to
// 90 s, and returns them and page2's tab itself (to close it).
func twoTabs(t *testing.T, ctx context.Context) (page1, page2, tab2 context.Context) {
	tctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(cancel)
	page1 = tab(t, tctx, "page1", true, false)
	tab2 = tab(t, ctx, "page2", false, false)
	page2, cancel2 := context.WithTimeout(tab2, 90*time.Second)
	t.Cleanup(cancel2)
	return page1, page2, tab2
}

// enterRoom opens the demo page at addr as user and asks to join room:
// set the name (Enter submits, the page reconnects under it), then the
// room (Enter again).
func enterRoom(t *testing.T, ctx context.Context, name, addr, user, room string) {
	t.Helper()
	do(t, ctx, name+": open", chromedp.Navigate("http://"+addr+"/"))
	poll(t, ctx, name+": connected", `document.querySelector("#state").dataset.state === "open"`)
	do(t, ctx, name+": set name",
		chromedp.SetValue(chromedp.ID("name"), user),
		chromedp.SendKeys(chromedp.ID("name"), kb.Enter))
	poll(t, ctx, name+": reconnected as "+user, fmt.Sprintf(
		`(s => s.dataset.state === "open" && s.dataset.user === %q)(document.querySelector("#state"))`, user))
	do(t, ctx, name+": join "+room, chromedp.SendKeys(chromedp.ID("room"), room+kb.Enter))
}
