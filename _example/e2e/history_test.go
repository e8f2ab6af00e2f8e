package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/chatrelay/chat/internal/demotest"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// missingExpr is true when the room's panel warns that messages may be
// missing.
func missingExpr(room string) string {
	return fmt.Sprintf(`document.querySelector('[data-testid=panel][data-room=%q] [data-testid=system].warn') !== null`, room)
}

func joinedExpr(room string) string {
	return fmt.Sprintf(`document.querySelector('[data-testid=tab][data-room=%q][data-joined=true]') !== null`, room)
}

// texts is what the page shows of a room's messages, in order.
func texts(t *testing.T, ctx context.Context, room string) []string {
	t.Helper()
	var out []string
	for _, m := range messagesOf(t, ctx, room) {
		out = append(out, m.Text)
	}
	return out
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestBrowserReloadShowsHistory sends a few messages from a page, reloads
// it, and expects the room to show them again, in order, with the same
// ids, and no warning: the page asks for the room's last 50 messages when
// it joins.
func TestBrowserReloadShowsHistory(t *testing.T) {
	ctx := browser(t)
	addr := demotest.FreeAddr(t)
	demotest.Start(t, "demo", []string{addr})
	tctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	page := tab(t, tctx, "page", true, false)

	room := fmt.Sprintf("e2e-%06x", rand.IntN(1<<24))
	do(t, page, "open", chromedp.Navigate("http://"+addr+"/"))
	poll(t, page, "connected", `document.querySelector("#state").dataset.state === "open"`)
	do(t, page, "join", chromedp.SendKeys(chromedp.ID("room"), room+kb.Enter))
	poll(t, page, "joined", joinedExpr(room))
	want := []string{"one", "two <i>three</i>", "four"}
	for i, text := range want {
		do(t, page, "send "+text, chromedp.SendKeys(chromedp.ID("text"), text+kb.Enter))
		poll(t, page, fmt.Sprintf("message %d shown", i+1), fmt.Sprintf(`%s === %d`, countExpr(room), i+1))
	}
	before := messagesOf(t, page, room)

	// A mark that the reload clears, so that no poll below can be answered
	// by the old page.
	do(t, page, "mark the old page", chromedp.Evaluate[chromedp.Void](`window.oldPage = true`))
	do(t, page, "reload", chromedp.Reload())
	poll(t, page, "new page connected", `!window.oldPage && document.querySelector("#state").dataset.state === "open"`)
	poll(t, page, "room rejoined after the reload", joinedExpr(room))
	poll(t, page, "history shown", fmt.Sprintf(`%s === %d`, countExpr(room), len(want)))
	after := messagesOf(t, page, room)
	if got := texts(t, page, room); !equalStrings(got, want) {
		t.Fatalf("after the reload the room shows %q, want %q", got, want)
	}
	for i := range after {
		if after[i].ID != before[i].ID || after[i].User != before[i].User || after[i].Instance != before[i].Instance || after[i].HTMLChildren != 0 {
			t.Errorf("message %d after the reload: %+v, before: %+v", i+1, after[i], before[i])
		}
	}
	if missing, _ := chromedp.Run(page, chromedp.Evaluate[bool](missingExpr(room))); missing {
		t.Errorf("the reloaded page says messages may be missing")
	}
	line, err := chromedp.Run(page, chromedp.Evaluate[string](fmt.Sprintf(
		`document.querySelector('[data-testid=panel][data-room=%q] [data-testid=system]')?.textContent ?? ""`, room)))
	if err != nil || line != fmt.Sprintf("Joined #%s as %s. The last 3 messages:", room, before[0].User) {
		t.Errorf("system line after the reload: %q (%v)", line, err)
	}
	// And the room goes on: a new message comes after the history, once.
	// (The reloaded page selects its first room, lobby.)
	do(t, page, "select the room", chromedp.Click(fmt.Sprintf(`[data-testid=tab][data-room=%q] [data-testid=tab-select]`, room)))
	do(t, page, "send after the reload", chromedp.SendKeys(chromedp.ID("text"), "five"+kb.Enter))
	poll(t, page, "new message shown", fmt.Sprintf(`%s === %d`, countExpr(room), len(want)+1))
	if got := texts(t, page, room); !equalStrings(got, append(want, "five")) {
		t.Errorf("the room shows %q", got)
	}
	screenshot(t, page, filepath.Join(t.ArtifactDir(), "reloaded.png"))
}

// TestBrowserStopStartRecovers runs two demo processes, A and B, on a real
// redis-server. A page on A is in a room; A is stopped (SIGTERM: close
// 1001) and, while the page is reconnecting, 60 messages are sent through B
// (more than the 50 the page asks for as history); then A is started again
// on the same address. The page reconnects,
// rejoins with its position, and shows every message exactly once, in
// order, without "messages may be missing"; live messages go on after
// them.
func TestBrowserStopStartRecovers(t *testing.T) {
	ctx := browser(t)
	a, addrA, addrB, rs := twoDemos(t, nil, []string{"-rate-limit", "0"})
	tctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	page := tab(t, tctx, "page", true, true) // the page logs its failed attempts while A is down

	room := fmt.Sprintf("e2e-%06x", rand.IntN(1<<24))
	do(t, page, "open A", chromedp.Navigate("http://"+addrA+"/"))
	poll(t, page, "connected", `document.querySelector("#state").dataset.state === "open"`)
	do(t, page, "join", chromedp.SendKeys(chromedp.ID("room"), room+kb.Enter))
	poll(t, page, "joined", joinedExpr(room))
	bob := dialWS(t, "ws://"+addrB+"/chat?"+url.Values{"room": {room}, "user": {"bob"}}.Encode())
	expect(t, "bob@B", bob, "joined")

	want := []string{"from the page before the stop"}
	do(t, page, "send before", chromedp.SendKeys(chromedp.ID("text"), want[0]+kb.Enter))
	poll(t, page, "own message shown", countExpr(room)+` === 1`)
	expect(t, "bob@B", bob, "message")

	if err := a.Stop(); err != nil {
		t.Fatalf("stop A: %v", err)
	}
	poll(t, page, "reconnecting after close 1001", `document.querySelector("#state").dataset.state === "reconnecting"`)
	// Bob talks through B while A is down: more messages than the page's
	// history (50), fewer than the demo keeps (100), so that only a
	// recovery (since) brings them all back. Each is in Redis once bob has
	// its copy back.
	const missed = 60
	for i := 1; i <= missed; i++ {
		text := fmt.Sprintf("from bob while A is down, %d", i)
		want = append(want, text)
		send(t, bob, map[string]string{"type": "message", "room": room, "text": text, "ref": fmt.Sprint("b", i)})
	}
	for _, text := range want[1:] {
		if m := expect(t, "bob@B", bob, "message"); m.Text != text {
			t.Fatalf("bob got %+v, want %q", m, text)
		}
	}
	if n, _ := chromedp.Run(page, chromedp.Evaluate[int](countExpr(room))); n != 1 {
		t.Fatalf("the page shows %d messages while its server is down, want 1", n)
	}

	demotest.Start(t, "A again", []string{addrA}, "-redis", "redis://"+rs.Addr)
	poll(t, page, "connected again", `document.querySelector("#state").dataset.state === "open"`)
	poll(t, page, "rejoined", joinedExpr(room))
	poll(t, page, "missed messages shown", fmt.Sprintf(`%s >= %d`, countExpr(room), len(want)))
	// A live message after the recovered ones: anything shown twice would
	// have come before it.
	want = append(want, "from bob after the restart")
	send(t, bob, map[string]string{"type": "message", "room": room, "text": want[len(want)-1], "ref": "after"})
	poll(t, page, "live message shown", fmt.Sprintf(
		`[...document.querySelectorAll('[data-testid=panel][data-room=%q] [data-testid=text]')].some(e => e.textContent === %q)`, room, want[len(want)-1]))
	if got := texts(t, page, room); !equalStrings(got, want) {
		t.Errorf("the page shows %q\nwant (each once, in order) %q", got, want)
	}
	if missing, _ := chromedp.Run(page, chromedp.Evaluate[bool](missingExpr(room))); missing {
		t.Errorf(`the page says "messages may be missing" after a reconnect that lost nothing`)
	}
	screenshot(t, page, filepath.Join(t.ArtifactDir(), "recovered.png"))
}
