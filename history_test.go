package chat

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatrelay/chat/internal/wstest"
)

// joinRoom sends a join frame with extra fields and returns the "joined".
func joinRoom(t *testing.T, c *wstest.Conn, room string, extra map[string]any) map[string]any {
	t.Helper()
	f := map[string]any{"type": "join", "room": room}
	for k, v := range extra {
		f[k] = v
	}
	must(t, c.SendJSON(f))
	return c.Next(t, "joined", wait)
}

// seqs returns the seq of each frame of a joined frame's messages, or of
// frames, and their texts.
func seqs(frames []any) ([]int64, []string) {
	var ss []int64
	var texts []string
	for _, f := range frames {
		m := f.(map[string]any)
		ss = append(ss, int64(m["seq"].(float64)))
		texts = append(texts, str(m["text"]))
	}
	return ss, texts
}

func num(v any) int64 { f, _ := v.(float64); return int64(f) }

// Every message carries its room's next seq, assigned by Redis: 1, 2, 3, …
// with no gap, the same on every instance, whoever sent it.
func TestSeqIsGaplessAcrossInstances(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		const instances, each = 3, 20
		var clients []*wstest.Conn
		for i := range instances {
			in := newInstance(t, be, WithRateLimit(0, 1))
			c := wstest.MustDial(t, in.url+fmt.Sprintf("?user=u%d", i), nil)
			if j := joinRoom(t, c, "numbered", nil); num(j["seq"]) != 0 && i == 0 {
				t.Fatalf("first joined of an empty room: %v, want seq 0", j)
			}
			clients = append(clients, c)
		}
		var wg sync.WaitGroup
		for i, c := range clients {
			wg.Go(func() {
				for k := range each {
					if err := c.SendJSON(msgFrame("numbered", fmt.Sprintf("%d-%d", i, k), "")); err != nil {
						t.Errorf("send: %v", err)
						return
					}
				}
			})
		}
		wg.Wait()
		for i, c := range clients {
			for want := int64(1); want <= instances*each; want++ {
				if m := c.Next(t, "message", wait); num(m["seq"]) != want {
					t.Fatalf("client %d: message %v has seq %v, want %d", i, m["text"], m["seq"], want)
				}
			}
		}
	})
}

// A join with history gets the room's latest messages, oldest first, with
// "joined", then every message after them; without history, "joined" still
// says where the room stands (epoch and seq).
func TestJoinWithHistory(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		a, b := newInstance(t, be), newInstance(t, be)
		alice := wstest.MustDial(t, a.url+"?user=alice", nil)
		empty := joinRoom(t, alice, "hist", map[string]any{"history": 10})
		if num(empty["seq"]) != 0 || str(empty["epoch"]) == "" || len(empty["messages"].([]any)) != 0 {
			t.Fatalf("joined an empty room: %v, want seq 0, an epoch and no messages", empty)
		}
		for i := 1; i <= 5; i++ {
			must(t, alice.SendJSON(msgFrame("hist", fmt.Sprintf("m%d", i), "")))
			alice.Next(t, "message", wait)
		}

		bob := wstest.MustDial(t, b.url+"?user=bob", nil)
		j := joinRoom(t, bob, "hist", map[string]any{"history": 3})
		ss, texts := seqs(j["messages"].([]any))
		if j["epoch"] != empty["epoch"] || num(j["seq"]) != 5 || fmt.Sprint(ss) != "[3 4 5]" || strings.Join(texts, " ") != "m3 m4 m5" {
			t.Fatalf("joined with history 3: %v", j)
		}
		if _, has := j["recovered"]; has {
			t.Errorf("joined without since carries recovered: %v", j)
		}
		must(t, alice.SendJSON(msgFrame("hist", "m6", "")))
		if m := bob.Next(t, "message", wait); num(m["seq"]) != 6 || m["text"] != "m6" {
			t.Fatalf("after joined: %v, want m6 with seq 6", m)
		}

		carol := a.connect(t, "user=carol")
		if j := joinRoom(t, carol, "hist", nil); num(j["seq"]) != 6 || j["epoch"] != empty["epoch"] || j["messages"] != nil {
			t.Fatalf("plain join: %v, want seq 6, the epoch and no messages", j)
		}
		// ?history= at connect does the same for the rooms named there.
		dave := wstest.MustDial(t, b.url+"?user=dave&room=hist&history=2", nil)
		if ss, _ := seqs(dave.Next(t, "joined", wait)["messages"].([]any)); fmt.Sprint(ss) != "[5 6]" {
			t.Fatalf("?history=2: messages %v, want seqs 5 and 6", ss)
		}
	})
}

// A client that comes back (to another instance) with since gets exactly
// the messages it missed, recovered, then the live ones without a gap; a
// position it cannot continue (another epoch, history trimmed) gets
// recovered:false and, if it asked, the latest messages.
func TestRecoveryAfterReconnect(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		a, b := newInstance(t, be, WithHistory(5)), newInstance(t, be, WithHistory(5))
		alice := wstest.MustDial(t, a.url+"?user=alice", nil)
		epoch := str(joinRoom(t, alice, "rec", nil)["epoch"])
		for i := 1; i <= 2; i++ {
			must(t, alice.SendJSON(msgFrame("rec", fmt.Sprintf("m%d", i), "")))
			alice.Next(t, "message", wait)
		}
		alice.Close() // at seq 2

		bob := b.connect(t, "user=bob&room=rec")
		for i := 3; i <= 5; i++ {
			must(t, bob.SendJSON(msgFrame("rec", fmt.Sprintf("m%d", i), "")))
			bob.Next(t, "message", wait)
		}
		back := wstest.MustDial(t, b.url+"?user=alice", nil)
		j := joinRoom(t, back, "rec", map[string]any{"since": map[string]any{"epoch": epoch, "seq": 2}})
		if ss, _ := seqs(j["messages"].([]any)); j["recovered"] != true || num(j["seq"]) != 5 || fmt.Sprint(ss) != "[3 4 5]" {
			t.Fatalf("recovery from seq 2: %v, want recovered with seqs 3 4 5", j)
		}
		must(t, bob.SendJSON(msgFrame("rec", "m6", "")))
		if m := back.Next(t, "message", wait); num(m["seq"]) != 6 {
			t.Fatalf("after recovery: %v, want seq 6", m)
		}

		// Nothing missed: recovered, no messages.
		again := wstest.MustDial(t, a.url+"?user=alice", nil)
		if j := joinRoom(t, again, "rec", map[string]any{"since": map[string]any{"epoch": epoch, "seq": 6}}); j["recovered"] != true || len(j["messages"].([]any)) != 0 {
			t.Fatalf("recovery at the room's position: %v", j)
		}
		// Another epoch: not recovered; the latest messages if asked for.
		if j := joinRoom(t, again, "rec2", map[string]any{"since": map[string]any{"epoch": "gone", "seq": 1}}); j["recovered"] != false {
			t.Fatalf("recovery from another epoch: %v, want recovered:false", j)
		}
		if j := joinRoom(t, again, "rec", map[string]any{"history": 2, "since": map[string]any{"epoch": "gone", "seq": 1}}); j["recovered"] != false {
			t.Fatalf("recovery from another epoch: %v, want recovered:false", j)
		} else if ss, _ := seqs(j["messages"].([]any)); fmt.Sprint(ss) != "[5 6]" {
			t.Fatalf("not recovered, history 2: seqs %v, want 5 6", ss)
		}
		// Trimmed: 6 messages, 5 kept; from seq 0 the first is gone.
		if j := joinRoom(t, back, "rec", map[string]any{"since": map[string]any{"epoch": epoch, "seq": 0}}); j["recovered"] != false {
			t.Fatalf("recovery past the history kept: %v, want recovered:false", j)
		}
	})
}

// A client joins with history while three instances' senders publish at
// full speed: from its "joined" on, the seqs it holds (the history, then
// live messages) run on without a gap or a duplicate to the last message.
func TestGaplessJoinUnderLoad(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		const senders, each = 3, 150
		var ins []*instance
		var clients []*wstest.Conn
		for i := range senders {
			in := newInstance(t, be, WithRateLimit(0, 1))
			ins = append(ins, in)
			clients = append(clients, in.connect(t, fmt.Sprintf("user=s%d&room=load", i)))
		}
		var wg sync.WaitGroup
		started := make(chan struct{})
		for i, c := range clients {
			wg.Go(func() {
				for k := range each {
					if k == each/3 && i == 0 {
						close(started)
					}
					if err := c.SendJSON(msgFrame("load", fmt.Sprintf("%d-%d", i, k), "")); err != nil {
						t.Errorf("send: %v", err)
						return
					}
				}
			})
		}
		<-started
		late := wstest.MustDial(t, ins[1].url+"?user=late", nil)
		j := joinRoom(t, late, "load", map[string]any{"history": 20})
		held, _ := seqs(j["messages"].([]any))
		if n := len(held); n > 0 && held[n-1] != num(j["seq"]) {
			t.Fatalf("joined at seq %v, but its history ends at %d", j["seq"], held[n-1])
		}
		next := num(j["seq"]) + 1
		for next <= senders*each {
			m := late.Next(t, "message", wait)
			if got := num(m["seq"]); got != next {
				t.Fatalf("after joined at seq %v: got seq %d, want %d (gap or duplicate)", j["seq"], got, next)
			}
			next++
		}
		wg.Wait()
		t.Logf("joined at seq %v of %d with %d messages of history; every later seq arrived once, in order", j["seq"], senders*each, len(held))
	})
}

// The history keeps exactly the last WithHistory messages, as the bytes
// members received, and expires with the room key; History reads it.
func TestHistoryKeptAndExpires(t *testing.T) {
	be := miniBackend(t)
	in := newInstance(t, be, WithHistory(3), WithRoomTTL(time.Minute))
	c := in.connect(t, "user=ann&room=kept")
	var frames []string // exactly as the member received them
	for i := 1; i <= 5; i++ {
		must(t, c.SendJSON(msgFrame("kept", fmt.Sprintf("m%d", i), "")))
		op, payload, err := c.ReadFrame(wait)
		must(t, err)
		if op != wstest.OpText {
			t.Fatalf("frame opcode %#x", op)
		}
		frames = append(frames, string(payload))
	}
	rc := be.client(t)
	ctx := context.Background()
	entries, err := rc.XRange(ctx, "chat:hist:{kept}", "-", "+").Result()
	must(t, err)
	var stored []string
	for _, e := range entries {
		stored = append(stored, fmt.Sprint(e.Values["m"]))
	}
	if strings.Join(stored, "\n") != strings.Join(frames[2:], "\n") {
		t.Errorf("history holds\n%s\nwant the last 3 frames the member received\n%s", strings.Join(stored, "\n"), strings.Join(frames[2:], "\n"))
	}
	msgs, err := in.h.History(ctx, "kept", 10)
	must(t, err)
	var got []string
	for _, m := range msgs {
		got = append(got, fmt.Sprintf("%d:%s:%s", m.Seq, m.User, m.Text))
	}
	if strings.Join(got, " ") != "3:ann:m3 4:ann:m4 5:ann:m5" {
		t.Errorf("History = %v, want seqs 3-5 of ann, oldest first", got)
	}
	if be.mr.TTL("chat:hist:{kept}") != be.mr.TTL("chat:room:{kept}") {
		t.Errorf("TTLs differ: history %v, room %v", be.mr.TTL("chat:hist:{kept}"), be.mr.TTL("chat:room:{kept}"))
	}
	c.Close()
	eventually(t, wait, "the room left", func() bool { return in.h.Stats().Rooms == 0 })
	be.mr.FastForward(time.Minute + time.Second)
	if be.mr.Exists("chat:hist:{kept}") || be.mr.Exists("chat:room:{kept}") {
		t.Errorf("a minute after the last sign of life: keys %v, want none", be.mr.Keys())
	}
}

// Bad history or since values get bad_request with the ref; a bad
// ?history= at connect closes with 1008.
func TestJoinBadHistoryOrSince(t *testing.T) {
	in := newInstance(t, miniBackend(t))
	c := in.connect(t, "user=ann")
	for i, raw := range []string{
		`{"type":"join","room":"r","history":-1,"ref":"%d"}`,
		`{"type":"join","room":"r","history":"ten","ref":"%d"}`,
		`{"type":"join","room":"r","history":1.5,"ref":"%d"}`,
		`{"type":"join","room":"r","since":{"seq":3},"ref":"%d"}`,
		`{"type":"join","room":"r","since":{"epoch":"e"},"ref":"%d"}`,
		`{"type":"join","room":"r","since":{"epoch":"e","seq":-1},"ref":"%d"}`,
		`{"type":"join","room":"r","since":"e:3","ref":"%d"}`,
	} {
		must(t, c.SendText(fmt.Sprintf(raw, i)))
		if e := c.Next(t, "error", wait); e["code"] != codeBadRequest || e["ref"] != fmt.Sprint(i) {
			t.Errorf("%s: %v, want bad_request with its ref", raw, e)
		}
	}
	bad, _, _ := wstest.Dial(t, in.url+"?room=r&history=lots", nil)
	if code := bad.ExpectClose(t, wait); code != 1008 || !strings.Contains(bad.CloseReason, "history") {
		t.Errorf("?history=lots: close %d %q, want 1008 naming history", code, bad.CloseReason)
	}
}

// seqOf reads the seq the publish script spliced in, and nothing else,
// without allocating: it runs once per relayed message.
func TestSeqOf(t *testing.T) {
	for frame, want := range map[string]int64{
		`{"type":"message","text":"x","seq":42}`:          42,
		`{"type":"message","text":",\"seq\":7}","seq":1}`: 1,
		`{"type":"message","text":"no seq"}`:              0,
		`{"type":"message","seq":}`:                       0,
		`{"type":"message","seq":-3}`:                     0,
		`{"type":"message","seq":1e3}`:                    0,
		`,"seq":9}`:                                       9,
		``:                                                0,
	} {
		if got := seqOf([]byte(frame)); got != want {
			t.Errorf("seqOf(%s) = %d, want %d", frame, got, want)
		}
	}
	frame := []byte(`{"type":"message","room":"r","text":"hi","seq":123456}`)
	if allocs := testing.AllocsPerRun(100, func() { seqOf(frame) }); allocs != 0 {
		t.Errorf("seqOf allocates %v times per call", allocs)
	}
}
