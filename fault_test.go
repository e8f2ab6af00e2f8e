package chat

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/chatrelay/chat/internal/proxytest"
	"github.com/chatrelay/chat/internal/wstest"
	"github.com/redis/go-redis/v9"
)

// Redis is killed and restarted without persistence. Meanwhile sends are
// refused with "unavailable" and joins fail; once the subscription is back
// the same connections are told "resumed", not recovered (Redis lost the
// history: a new epoch), and chat again. Nothing is left running.
func TestRedisKilledAndRestarted(t *testing.T) {
	be := realRedis(t)
	a, b := newInstance(t, be), newInstance(t, be)
	ca := a.connect(t, "room=fault&user=ann")
	cb := b.connect(t, "room=fault&user=ben")
	must(t, ca.SendJSON(msgFrame("fault", "before", "")))
	for _, c := range []*wstest.Conn{ca, cb} {
		c.Next(t, "message", wait)
	}

	oldEpoch := be.client(t).HGet(context.Background(), "chat:room:{fault}", "e").Val()
	be.real.Kill(t)
	must(t, ca.SendJSON(msgFrame("fault", "into the void", "lost-1")))
	if e := ca.Next(t, "error", 2*a.h.cfg.publishTimeout); e["code"] != codeUnavailable || e["ref"] != "lost-1" {
		t.Fatalf("send while Redis is down: %v, want unavailable with ref lost-1", e)
	}
	must(t, cb.SendJSON(map[string]any{"type": "join", "room": "newroom", "ref": "j1"}))
	if e := cb.Next(t, "error", a.h.cfg.subscribeTimeout+3*time.Second); e["code"] != codeUnavailable || e["ref"] != "j1" {
		t.Fatalf("join while Redis is down: %v, want unavailable with ref j1", e)
	}
	if err := a.h.Publish(context.Background(), "fault", "server", "nobody"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Publish while Redis is down = %v, want ErrUnavailable", err)
	}

	be.real.Restart(t)
	restarted := time.Now()
	for _, c := range []*wstest.Conn{ca, cb} {
		// Redis came back empty (no persistence): a new epoch, a gap that no
		// history can fill.
		if f := c.Next(t, "joined", 10*time.Second); f["room"] != "fault" || f["resumed"] != true ||
			f["recovered"] != false || f["epoch"] == oldEpoch || str(f["epoch"]) == "" {
			t.Fatalf("after the restart: %v, want joined fault resumed, not recovered, in a new epoch (was %q)", f, oldEpoch)
		}
	}
	t.Logf("both instances resubscribed %v after Redis came back", time.Since(restarted).Round(time.Millisecond))
	must(t, cb.SendJSON(msgFrame("fault", "after", "back")))
	for _, c := range []*wstest.Conn{ca, cb} {
		if m := c.Next(t, "message", wait); m["text"] != "after" {
			t.Fatalf("after the restart: %v", m)
		}
	}
	must(t, cb.SendJSON(map[string]any{"type": "join", "room": "newroom"}))
	cb.Next(t, "joined", wait)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca.Close()
	cb.Close()
	must(t, a.h.Shutdown(ctx))
	must(t, b.h.Shutdown(ctx))
	noGoroutinesLeft(t)
}

// An instance's connections to Redis go silent without closing: every
// publishing connection, old and new, and the subscription connection (a new
// one works, as after a NAT lost its state). go-redis notices nothing; the
// watchdog must: after 2 s of silence it subscribes a new connection and
// gives the old one a second to catch up; the gap cannot be filled from
// the history either (the publishing side is frozen too: its read fails at
// the publish timeout), so within 7 s in all it tells members they may
// have missed messages, even while a join waits on the silent publishing side to
// set its room key; a send stuck there is answered "unavailable"; once
// publishing works again, everything does.
func TestRedisConnectionsFrozen(t *testing.T) {
	be := realRedis(t)
	pubProxy, subProxy := proxytest.Start(t, be.addr), proxytest.Start(t, be.addr)
	via := func(p *proxytest.Proxy) *redis.Client {
		// A read timeout longer than the publish timeout: the 3 s answer
		// must not depend on the client's options.
		c := redis.NewClient(&redis.Options{Addr: p.Addr, ReadTimeout: 20 * time.Second})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	a := newInstanceWith(t, via(pubProxy), via(subProxy))
	b := newInstance(t, be)
	ca := a.connect(t, "room=ice&user=ann")
	cb := b.connect(t, "room=ice&user=ben")

	pubProxy.Freeze()
	subProxy.FreezeExisting()
	frozen := time.Now()
	must(t, ca.SendJSON(msgFrame("ice", "into the ice", "stuck")))
	must(t, ca.SendJSON(map[string]any{"type": "join", "room": "newice", "ref": "j-new"}))
	// Published by b while a's subscription is silent: lost for a (at
	// most once), delivered to b's members.
	must(t, cb.SendJSON(msgFrame("ice", "while frozen", "")))
	cb.Next(t, "message", wait)

	// a's client hears, in any order: the watchdog's resume, the failure
	// of its stuck send, and an answer to its join.
	var resumedAfter time.Duration
	for got := map[string]bool{}; len(got) < 3; {
		f, err := ca.ReadJSON(12 * time.Second)
		if err != nil {
			t.Fatalf("while frozen, after %v: %v; had %v", time.Since(frozen), err, got)
		}
		switch {
		case f["type"] == "joined" && f["room"] == "ice" && f["resumed"] == true:
			resumedAfter = time.Since(frozen)
			got["joined"] = true
		case f["type"] == "error" && f["code"] == codeUnavailable && f["ref"] == "stuck":
			if d := time.Since(frozen); d > a.h.cfg.publishTimeout+500*time.Millisecond {
				t.Errorf("stuck send answered after %v, want within the publish timeout (%v)", d, a.h.cfg.publishTimeout)
			}
			got["error"] = true
		case f["type"] == "joined" && f["room"] == "newice",
			f["type"] == "error" && f["code"] == codeUnavailable && f["ref"] == "j-new":
			got["join"] = true
		default:
			t.Fatalf("while frozen, a's client got %v", f)
		}
	}
	if resumedAfter > 7*time.Second {
		t.Errorf("members told after %v, want within 7 s", resumedAfter)
	}
	t.Logf("silent subscription replaced and resubscribed in %v", resumedAfter.Round(time.Millisecond))

	pubProxy.Unfreeze()
	must(t, ca.SendJSON(msgFrame("ice", "thawed", "")))
	for _, c := range []*wstest.Conn{ca, cb} {
		m := c.Next(t, "message", wait)
		if m["ref"] == "stuck" {
			// The bytes of the timed-out send were still in flight and
			// reached Redis once the network thawed: "unavailable" means
			// not confirmed, and such a late copy arrives once.
			m = c.Next(t, "message", wait)
		}
		if m["text"] != "thawed" {
			t.Fatalf("after the freeze: %v", m)
		}
	}
	ca.Close()
	cb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	must(t, a.h.Shutdown(ctx))
	must(t, b.h.Shutdown(ctx))
	noGoroutinesLeft(t)
}

// Redis sleeps for 8 s (DEBUG SLEEP) under a client that sends every 100 ms,
// through a publishing client whose own read timeout (20 s) is far longer
// than the publish timeout: every message is answered within the publish
// timeout anyway, by its copy or by "unavailable", and so is Publish.
func TestPublishTimeoutWhateverTheClient(t *testing.T) {
	be := realRedis(t, "--enable-debug-command", "local")
	patient := func() *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: be.addr, ReadTimeout: 20 * time.Second})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	a := newInstanceWith(t, patient(), patient())
	c := a.connect(t, "room=nap&user=ann")
	limit := a.h.cfg.publishTimeout

	asleep := redisSleeps(t, be, 8*time.Second)
	sent := map[string]time.Time{}
	for i := range 10 {
		ref := fmt.Sprintf("m%d", i)
		sent[ref] = time.Now()
		must(t, c.SendJSON(msgFrame("nap", "zzz", ref)))
		time.Sleep(100 * time.Millisecond)
	}
	published := make(chan error, 1)
	go func() {
		start := time.Now()
		err := a.h.Publish(context.Background(), "nap", "server", "zzz")
		if took := time.Since(start); !errors.Is(err, ErrUnavailable) || took > limit+500*time.Millisecond {
			err = fmt.Errorf("Publish while Redis sleeps: %v after %v, want ErrUnavailable within %v", err, took, limit)
		} else {
			err = nil
		}
		published <- err
	}()
	var slowest time.Duration
	for answered := map[string]bool{}; len(answered) < len(sent); {
		f, err := c.ReadJSON(limit + 2*time.Second)
		if err != nil {
			t.Fatalf("%d of %d messages answered, then: %v", len(answered), len(sent), err)
		}
		ref, _ := f["ref"].(string)
		if _, ours := sent[ref]; !ours || answered[ref] || (f["type"] != "message" && f["code"] != codeUnavailable) {
			continue // a late copy of a message already answered "unavailable"
		}
		answered[ref] = true
		took := time.Since(sent[ref])
		slowest = max(slowest, took)
		if took > limit+500*time.Millisecond {
			t.Errorf("%s answered %v after it was sent (%v), want within %v", ref, f["type"], took.Round(time.Millisecond), limit)
		}
	}
	t.Logf("Redis asleep for 8 s: every sender answered, the slowest after %v", slowest.Round(time.Millisecond))
	if err := <-published; err != nil {
		t.Error(err)
	}
	<-asleep
}

// redisSleeps makes the Redis of be sleep for d (DEBUG SLEEP) and returns
// once it is asleep; the channel is closed when it wakes.
func redisSleeps(t *testing.T, be *backend, d time.Duration) <-chan struct{} {
	t.Helper()
	woke := make(chan struct{})
	sleeper := redis.NewClient(&redis.Options{Addr: be.addr, ReadTimeout: d + 10*time.Second})
	t.Cleanup(func() { <-woke; _ = sleeper.Close() })
	go func() {
		defer close(woke)
		if err := sleeper.Do(context.Background(), "DEBUG", "SLEEP", d.Seconds()).Err(); err != nil {
			t.Errorf("DEBUG SLEEP: %v", err)
		}
	}()
	probe := redis.NewClient(&redis.Options{Addr: be.addr, ReadTimeout: 50 * time.Millisecond, MaxRetries: -1})
	defer probe.Close()
	for deadline := time.Now().Add(wait); probe.Ping(context.Background()).Err() == nil; {
		if time.Now().After(deadline) {
			t.Fatal("Redis never fell asleep")
		}
	}
	return woke
}

// Redis stalls for 3 s (DEBUG SLEEP), longer than the watchdog waits, while
// a client on each of two instances sends every 100 ms. The watchdog
// replaces the silent subscription connections make-before-break, so
// nothing is lost: every message reaches every member exactly once, or its
// sender got an error.
func TestRedisStallLosesNothing(t *testing.T) {
	be := realRedis(t, "--enable-debug-command", "local")
	stallLosesNothing(t, newInstance(t, be), newInstance(t, be), "stall", be)
}

// stallLosesNothing runs the stall test of room on two instances, putting
// the Redis at sleeper to sleep.
func stallLosesNothing(t *testing.T, a, b *instance, room string, sleeper *backend) {
	members := []*wstest.Conn{a.connect(t, "room="+room+"&user=ann"), b.connect(t, "room="+room+"&user=ben")}

	const perSender = 40 // 4 s of traffic around the 3 s stall
	sent := 0
	senders := make(chan error, len(members))
	underway := make(chan struct{}) // half a second of traffic has gone through
	for i, c := range members {
		go func() {
			for n := range perSender {
				if err := c.SendJSON(msgFrame(room, "tick", fmt.Sprintf("%d-%d", i, n))); err != nil {
					senders <- err
					return
				}
				if n == 5 && i == 0 {
					close(underway)
				}
				time.Sleep(100 * time.Millisecond) // the pace of the traffic
			}
			senders <- nil
		}()
	}
	<-underway
	redisSleeps(t, sleeper, 3*time.Second)
	for range members {
		must(t, <-senders)
		sent += perSender
	}

	// Each member's view: the messages it received (counted, to catch
	// duplicates) and the errors its own sends got.
	got := make([]map[string]int, len(members))
	refused := map[string]bool{}
	for i, c := range members {
		got[i] = map[string]int{}
		for quiet := false; !quiet; {
			f, err := c.ReadJSON(2 * time.Second)
			switch {
			case err != nil:
				quiet = true // nothing for 2 s after the last send: done
			case f["type"] == "message":
				got[i][str(f["ref"])]++
			case f["type"] == "error" && f["code"] == codeUnavailable:
				refused[str(f["ref"])] = true
			case f["type"] == "joined" && f["resumed"] == true:
				t.Errorf("member %d told it may have missed messages during a mere stall", i)
			}
		}
	}
	lost := 0
	for i := range members {
		for n := range perSender {
			for j := range members {
				ref := fmt.Sprintf("%d-%d", j, n)
				switch got[i][ref] {
				case 0:
					if !refused[ref] {
						lost++
						t.Errorf("member %d never got %s, and its sender got no error", i, ref)
					}
				case 1:
				default:
					t.Errorf("member %d got %s %d times", i, ref, got[i][ref])
				}
			}
		}
	}
	t.Logf("%d messages sent during a 3 s stall: %d refused with unavailable, %d lost silently", sent, len(refused), lost)
}

// The instance's subscription connection is lost while a sender on another
// instance keeps sending: killed by Redis (CLIENT KILL TYPE pubsub), or
// frozen on the way (a proxy that stops forwarding; the watchdog replaces
// it). Either way the instance reads what it missed from the room's
// history and delivers it before anything live: its member ends with every
// seq, in order, once, and is never told it may have missed messages.
func TestGapFilledAfterLostSubscription(t *testing.T) {
	for _, how := range []string{"killed", "frozen"} {
		t.Run(how, func(t *testing.T) {
			be, proxy, a, member, sender := proxiedRoom(t, "gap")

			const total = 60
			sent := make(chan error, 1)
			halfway := make(chan struct{})
			go func() {
				for k := 1; k <= total; k++ {
					if err := sender.SendJSON(msgFrame("gap", fmt.Sprint(k), "")); err != nil {
						sent <- err
						return
					}
					if k == 10 {
						close(halfway)
					}
					time.Sleep(50 * time.Millisecond) // the pace of the traffic
				}
				sent <- nil
			}()
			<-halfway
			switch how {
			case "killed":
				must(t, be.client(t).Do(context.Background(), "CLIENT", "KILL", "TYPE", "pubsub").Err())
			case "frozen":
				proxy.FreezeExisting()
			}
			must(t, <-sent)
			for want := int64(1); want <= total; want++ {
				f, err := member.ReadJSON(10 * time.Second)
				if err != nil {
					t.Fatalf("waiting for seq %d: %v", want, err)
				}
				switch {
				case f["type"] == "joined":
					t.Fatalf("member told %v: the gap should have been filled", f)
				case f["type"] != "message":
					want--
					continue
				case num(f["seq"]) != want:
					t.Fatalf("got seq %v (%v), want %d", f["seq"], f["text"], want)
				}
			}
			if s := a.h.Stats(); s.GapFills == 0 || s.SubscriptionReconnects == 0 {
				t.Errorf("Stats = %+v, want a reconnect and a gap fill counted", s)
			}
		})
	}
}

// A room's history is rewritten under the instance while its subscription
// is frozen, as when a master dies before its replica got the last message
// and the replica takes over: the seq the member saw last now numbers
// another message. The gap fill notices (the member's last message is not
// in the history any more) and tells the member recovered:false, rather
// than fill the gap from a seq that means something else now.
func TestGapFillNoticesRenumbering(t *testing.T) {
	be, proxy, _, member, sender := proxiedRoom(t, "renum")
	for _, text := range []string{"one", "two"} {
		must(t, sender.SendJSON(msgFrame("renum", text, "")))
		if m := member.Next(t, "message", wait); m["text"] != text {
			t.Fatalf("got %v, want %q", m, text)
		}
	}

	proxy.FreezeExisting()
	// What a replica that never got "two" would hold: seq 1, history up to 1.
	ctx := context.Background()
	rc := be.client(t)
	one := rc.XRange(ctx, "chat:hist:{renum}", "1-0", "1-0").Val()
	must(t, rc.HSet(ctx, "chat:room:{renum}", "s", 1).Err())
	must(t, rc.Del(ctx, "chat:hist:{renum}").Err())
	must(t, rc.XAdd(ctx, &redis.XAddArgs{Stream: "chat:hist:{renum}", ID: "1-0", Values: one[0].Values}).Err())
	for _, text := range []string{"two again", "three"} {
		must(t, sender.SendJSON(msgFrame("renum", text, "")))
	}

	// The watchdog replaces the frozen connection; the gap fill finds seq 2
	// is not "two".
	f := member.Next(t, "joined", 10*time.Second)
	if f["resumed"] != true || f["recovered"] != false || num(f["seq"]) != 3 {
		t.Fatalf("got %v, want joined resumed, not recovered, at seq 3", f)
	}
	must(t, sender.SendJSON(msgFrame("renum", "four", "")))
	if m := member.Next(t, "message", wait); m["text"] != "four" {
		t.Fatalf("got %v, want four", m)
	}
}

// proxiedRoom starts a real Redis and two instances: a, whose subscription
// connection goes through a proxy the test can freeze, with member ann in
// room, and another with sender ben in it.
func proxiedRoom(t *testing.T, room string) (be *backend, proxy *proxytest.Proxy, a *instance, member, sender *wstest.Conn) {
	t.Helper()
	be = realRedis(t)
	proxy = proxytest.Start(t, be.addr)
	sub := redis.NewClient(&redis.Options{Addr: proxy.Addr})
	t.Cleanup(func() { _ = sub.Close() })
	a = newInstanceWith(t, be.client(t), sub)
	b := newInstance(t, be)
	return be, proxy, a, a.connect(t, "user=ann&room="+room), b.connect(t, "user=ben&room="+room)
}
