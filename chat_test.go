package chat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/chatrelay/chat/internal/wstest"
	"github.com/redis/go-redis/v9"
)

// A message sent on one instance reaches every member of the room on every
// instance, the sender included, and only through Redis: each copy is the
// exact frame a plain Redis subscriber sees on the room's channel.
func TestRelayAcrossInstances(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		ins := []*instance{newInstance(t, be), newInstance(t, be), newInstance(t, be)}
		ctx := context.Background()
		spy := be.client(t).Subscribe(ctx, "chat:msg:{lobby}")
		defer spy.Close()
		_, err := spy.Receive(ctx) // the subscription confirmation
		must(t, err)

		alice := ins[0].connect(t, "room=lobby&user=alice")
		bob := ins[1].connect(t, "room=lobby&user=bob")
		carol := ins[2].connect(t, "room=lobby&user=carol")
		must(t, alice.SendJSON(msgFrame("lobby", "hello <b>everyone</b> \u2028 é", "c1")))

		relayed, err := spy.ReceiveMessage(ctx)
		for err == nil && strings.Contains(relayed.Payload, `"type":"user_`) {
			relayed, err = spy.ReceiveMessage(ctx) // presence notices travel there too
		}
		must(t, err)
		var want map[string]any
		must(t, json.Unmarshal([]byte(relayed.Payload), &want))
		if want["user"] != "alice" || want["instance"] != ins[0].h.InstanceID() || want["ref"] != "c1" ||
			want["text"] != "hello <b>everyone</b> \u2028 é" || want["room"] != "lobby" {
			t.Fatalf("frame published to Redis = %s", relayed.Payload)
		}
		for _, id := range []string{"id", "ts"} {
			if want[id] == nil || want[id] == "" {
				t.Fatalf("published frame has no %s: %s", id, relayed.Payload)
			}
		}
		for name, c := range map[string]*wstest.Conn{"alice (sender)": alice, "bob": bob, "carol": carol} {
			got := c.Next(t, "message", wait)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("%s got %v, want the Redis-relayed frame %v", name, got, want)
			}
		}
	})
}

// Many senders on several instances at once: every client of the room, on
// every instance, sees the same messages in the same order.
func TestSameOrderOnEveryInstance(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		const instances, perInstance, senders, each = 3, 3, 6, 30
		var clients []*wstest.Conn
		for i := 0; i < instances; i++ {
			in := newInstance(t, be, WithRateLimit(0, 1))
			for j := 0; j < perInstance; j++ {
				clients = append(clients, in.connect(t, fmt.Sprintf("room=race&user=u%d-%d", i, j)))
			}
		}
		var wg sync.WaitGroup
		for s := 0; s < senders; s++ {
			c := clients[s*len(clients)/senders]
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; k < each; k++ {
					if err := c.SendJSON(msgFrame("race", fmt.Sprintf("s%d-%d", s, k), "")); err != nil {
						t.Errorf("send: %v", err)
						return
					}
				}
			}()
		}
		wg.Wait()
		var first []string
		for i, c := range clients {
			var seq []string
			for len(seq) < senders*each {
				m := c.Next(t, "message", wait)
				seq = append(seq, str(m["id"])+"/"+str(m["text"]))
			}
			if i == 0 {
				first = seq
				continue
			}
			if !slices.Equal(seq, first) {
				t.Fatalf("client %d saw a different order than client 0:\n%v\n%v", i, seq, first)
			}
		}
		// Each sender's own messages stay in the order it sent them.
		next := map[string]int{}
		for _, m := range first {
			text := m[strings.Index(m, "/")+1:]
			var s, k int
			fmt.Sscanf(text, "s%d-%d", &s, &k)
			key := fmt.Sprint(s)
			if k != next[key] {
				t.Fatalf("sender %d: message %d arrived when %d was due", s, k, next[key])
			}
			next[key]++
		}
	})
}

// Publish takes the same path as clients; bad arguments are refused.
func TestPublish(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		in := newInstance(t, be)
		c := in.connect(t, "room=news&user=reader")
		ctx := context.Background()
		must(t, in.h.Publish(ctx, "news", "editor", "extra!"))
		m := c.Next(t, "message", wait)
		if m["user"] != "editor" || m["text"] != "extra!" || m["instance"] != in.h.InstanceID() {
			t.Fatalf("got %v", m)
		}
		for _, tc := range []struct {
			room, user, text string
			want             error
		}{
			{"bad room", "u", "t", ErrInvalidRoom},
			{"news", "", "t", ErrInvalidUser},
			{"news", "bell\a", "t", ErrInvalidUser},
			{"news", "u", "", ErrInvalidText},
			{"news", "u", strings.Repeat("x", 4097), ErrTooLarge},
		} {
			if err := in.h.Publish(ctx, tc.room, tc.user, tc.text); !errors.Is(err, tc.want) {
				t.Errorf("Publish(%q, %q, %d bytes) = %v, want %v", tc.room, tc.user, len(tc.text), err, tc.want)
			}
		}
		c.Close()
		must(t, in.h.Shutdown(ctx))
		if err := in.h.Publish(ctx, "news", "editor", "late"); !errors.Is(err, ErrClosed) {
			t.Fatalf("Publish after Shutdown = %v, want ErrClosed", err)
		}
	})
}

// Shutdown closes every client with 1001 and leaves no goroutine behind.
func TestShutdown(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		a, b := newInstance(t, be), newInstance(t, be)
		var cs []*wstest.Conn
		for i := 0; i < 5; i++ {
			cs = append(cs, a.connect(t, fmt.Sprintf("room=r%d&room=common&user=u%d", i, i)))
		}
		peer := b.connect(t, "room=common&user=peer")
		must(t, cs[0].SendJSON(msgFrame("common", "before shutdown", "")))
		peer.Next(t, "message", wait)

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		done := make(chan error, 1)
		go func() { done <- a.h.Shutdown(ctx) }()
		for i, c := range cs {
			if code := c.ExpectClose(t, wait); code != 1001 {
				t.Errorf("client %d: close code %d, want 1001", i, code)
			}
			must(t, c.SendClose(1001, "")) // as a browser answers
		}
		must(t, <-done)
		// Answered closes end the connections at once, well before the
		// grace period a silent client would be given.
		if d := time.Since(start); d > a.h.cfg.closeGrace/2 {
			t.Errorf("Shutdown took %v although every client answered the close", d)
		}
		if _, status, _ := wstest.Dial(t, a.url+"?room=late", nil); status != 503 {
			t.Errorf("connect after Shutdown: status %d, want 503", status)
		}
		go func() { done <- b.h.Shutdown(ctx) }()
		if code := peer.ExpectClose(t, wait); code != 1001 {
			t.Errorf("peer: close code %d, want 1001", code)
		}
		must(t, peer.SendClose(1001, ""))
		must(t, <-done)
		noGoroutinesLeft(t)
	})
}

// A Shutdown whose context ends drops the connections that did not answer
// the close, and still leaves no goroutine behind.
func TestShutdownDeadline(t *testing.T) {
	in := newInstance(t, miniBackend(t))
	c := in.connect(t, "room=stuck&user=mute")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	// c never reads, so it never answers the close frame: only the
	// deadline ends the wait (the close grace is 2 s).
	err := in.h.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want context.DeadlineExceeded", err)
	}
	noGoroutinesLeft(t)
	_ = c
}

// The ClusterClient code path works (against miniredis's one-node cluster).
// miniCluster is a cluster client of mr, which answers CLUSTER SLOTS as a
// one-node cluster (without sharded Pub/Sub, like Redis 6).
func miniCluster(t *testing.T, mr *miniredis.Miniredis) *redis.ClusterClient {
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{mr.Addr()}})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Classic Pub/Sub through cluster clients, as on a Redis 6 cluster
// (miniredis has no sharded Pub/Sub); cluster_test.go runs sharded Pub/Sub
// on a real cluster.
// So does a pair of one cluster client and one plain client, without the
// option: sharded Pub/Sub needs both to be cluster clients.
func TestClusterClientWithClassicPubSub(t *testing.T) {
	mr := miniredis.RunT(t)
	cluster := func() *redis.ClusterClient { return miniCluster(t, mr) }
	a := newInstanceWith(t, cluster(), cluster(), WithClassicPubSub())
	plain := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = plain.Close() })
	b := newInstanceWith(t, cluster(), plain)
	ca := a.connect(t, "room=shard&user=a")
	cb := b.connect(t, "room=shard&user=b")
	must(t, ca.SendJSON(msgFrame("shard", "across the cluster", "")))
	for _, c := range []*wstest.Conn{ca, cb} {
		if m := c.Next(t, "message", wait); m["text"] != "across the cluster" {
			t.Fatalf("got %v", m)
		}
	}
}

func TestNewRefusesBadClients(t *testing.T) {
	mr := miniredis.RunT(t)
	ok := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer ok.Close()
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": mr.Addr()}})
	defer ring.Close()
	for name, args := range map[string][2]redis.UniversalClient{
		"nil pub":       {nil, ok},
		"typed nil sub": {ok, (*redis.Client)(nil)},
		"ring":          {ring, ok},
	} {
		func() {
			defer func() {
				if r := recover(); r == nil || !strings.HasPrefix(fmt.Sprint(r), "chat: ") {
					t.Errorf("%s: New did not panic with a chat: message (recovered %v)", name, r)
				}
			}()
			New(args[0], args[1])
		}()
	}
}

// A Redis that lost its script cache (SCRIPT FLUSH, restart, failover)
// still takes messages: the script is sent again with its source.
func TestPublishAfterScriptFlush(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		in := newInstance(t, be)
		c := in.connect(t, "room=flush&user=f")
		must(t, c.SendJSON(msgFrame("flush", "before", "")))
		c.Next(t, "message", wait)
		must(t, be.client(t).ScriptFlush(context.Background()).Err())
		must(t, c.SendJSON(msgFrame("flush", "after", "r2")))
		if m := c.Next(t, "message", wait); m["ref"] != "r2" {
			t.Fatalf("after SCRIPT FLUSH: %v", m)
		}
	})
}

// Cross-origin upgrades are refused unless allowed; clients that send no
// Origin (not browsers) and same-host pages are accepted.
func TestOriginCheck(t *testing.T) {
	in := newInstance(t, miniBackend(t), WithAllowedOrigins("https://app.example.com"))
	host := strings.TrimPrefix(in.srv.URL, "http://")
	for origin, want := range map[string]int{
		"":                             101,
		"http://" + host:               101,
		"https://app.example.com":      101,
		"https://APP.example.com":      101,
		"https://evil.example":         403,
		"https://app.example.com.evil": 403,
		"null":                         403,
		"::not a url":                  403,
	} {
		hdr := http.Header{}
		if origin != "" {
			hdr.Set("Origin", origin)
		}
		c, status, _ := wstest.Dial(t, in.url+"?room=o", hdr)
		if status != want {
			t.Errorf("Origin %q: status %d, want %d", origin, status, want)
		}
		if c != nil {
			c.Close()
		}
	}
}

// A bad query is accepted as a WebSocket and then closed with 1008 and a
// reason naming the problem: a browser cannot read a refused handshake.
// Requests that cannot be a WebSocket at all get plain HTTP errors.
func TestBadQueryClosesWith1008(t *testing.T) {
	in := newInstance(t, miniBackend(t), WithMaxRooms(2))
	for query, reason := range map[string]string{
		"room=bad%20room":      "invalid room name",
		"user=%07bell":         "invalid user name",
		"room=a&room=b&room=c": "too many rooms",
	} {
		c, status, err := wstest.Dial(t, in.url+"?"+query, nil)
		if status != 101 {
			t.Errorf("?%s: status %d (%v), want 101 then close 1008", query, status, err)
			continue
		}
		if code := c.ExpectClose(t, wait); code != 1008 || !strings.Contains(c.CloseReason, reason) {
			t.Errorf("?%s: close %d %q, want 1008 naming %q", query, code, c.CloseReason, reason)
		}
		c.Close()
	}
	if in.h.Stats().Rooms != 0 {
		t.Errorf("a refused connection joined rooms: %+v", in.h.Stats())
	}
	// Duplicates count once: two distinct rooms are within the limit.
	in.connect(t, "room=a&room=a&room=b").Close()

	resp, err := http.Get(in.srv.URL + "/chat")
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("plain GET: status %d, want 400", resp.StatusCode)
	}
	resp, err = http.Post(in.srv.URL+"/chat", "text/plain", nil)
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != 405 {
		t.Errorf("POST: status %d, want 405", resp.StatusCode)
	}
}

// The authenticate hook runs before the upgrade: an error is a 401, and
// the user it returns is the one on messages, whatever the query says, if
// it is a valid name.
func TestAuthenticateHook(t *testing.T) {
	in := newInstance(t, miniBackend(t), WithAuthenticate(func(r *http.Request) (string, error) {
		switch r.Header.Get("Cookie") {
		case "session=carol":
			return "carol", nil
		case "session=bell": // an account name no display may show
			return "\abell", nil
		}
		return "", errors.New("no session")
	}))
	if _, status, _ := wstest.Dial(t, in.url+"?room=auth&user=carol", nil); status != 401 {
		t.Fatalf("no session: status %d, want 401", status)
	}
	c, status, err := wstest.Dial(t, in.url+"?room=auth&user=mallory", http.Header{"Cookie": {"session=carol"}})
	if status != 101 {
		t.Fatalf("with session: status %d (%v), want 101", status, err)
	}
	c.Next(t, "joined", wait)
	must(t, c.SendJSON(msgFrame("auth", "it's me", "")))
	if m := c.Next(t, "message", wait); m["user"] != "carol" {
		t.Fatalf("message user = %v, want the hook's carol", m["user"])
	}
	// The hook's names are held to the same rule as ?user=.
	bad, status, err := wstest.Dial(t, in.url+"?room=auth", http.Header{"Cookie": {"session=bell"}})
	if status != 101 {
		t.Fatalf("invalid name from the hook: status %d (%v), want 101 then close 1008", status, err)
	}
	if code := bad.ExpectClose(t, wait); code != 1008 || !strings.Contains(bad.CloseReason, "invalid user name") {
		t.Errorf("invalid name from the hook: close %d %q, want 1008 naming it", code, bad.CloseReason)
	}
}

// A user without a name gets an anonymous one.
func TestAnonymousUser(t *testing.T) {
	in := newInstance(t, miniBackend(t))
	c := in.connect(t, "room=anon")
	must(t, c.SendJSON(msgFrame("anon", "who am I", "")))
	if u := str(c.Next(t, "message", wait)["user"]); !strings.HasPrefix(u, "anon-") || !validUser(u) {
		t.Fatalf("user = %q, want anon-<random>", u)
	}
}

// Over WithMaxConnections an upgrade is refused with HTTP 503 and counted;
// a place freed is a place taken again.
func TestMaxConnections(t *testing.T) {
	in := newInstance(t, miniBackend(t), WithMaxConnections(2))
	a := in.connect(t, "room=full&user=a")
	in.connect(t, "room=full&user=b")
	if c, status, err := wstest.Dial(t, in.url+"?room=full&user=c", nil); status != http.StatusServiceUnavailable {
		t.Fatalf("third connection: status %d (%v), want 503", status, err)
	} else if c != nil {
		c.Close()
	}
	if got := in.h.Stats().ConnectionsRefused; got != 1 {
		t.Errorf("Stats().ConnectionsRefused = %d, want 1", got)
	}
	a.Close()
	eventually(t, wait, "a's place freed", func() bool {
		in.h.mu.Lock()
		defer in.h.mu.Unlock()
		return in.h.open == 1
	})
	in.connect(t, "room=full&user=d").Close()
}

// Sharded Pub/Sub on a cluster without it (Redis 6; miniredis stands in):
// a join is answered "unavailable" at once, not after the subscription
// timeout, and the log says once what to do.
func TestShardedPubSubRefusedByRedis6(t *testing.T) {
	mr := miniredis.RunT(t)
	cluster := func() *redis.ClusterClient { return miniCluster(t, mr) }
	var logs syncBuffer
	in := newInstanceWith(t, cluster(), cluster(), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	for i := range 3 {
		c := wstest.MustDial(t, in.url+"?user=old", nil)
		start := time.Now()
		must(t, c.SendJSON(map[string]any{"type": "join", "room": fmt.Sprint("r", i), "ref": "j"}))
		if e := c.Next(t, "error", wait); e["code"] != codeUnavailable || time.Since(start) > time.Second {
			t.Errorf("join: %v after %v, want unavailable at once", e, time.Since(start))
		}
	}
	if n := strings.Count(logs.String(), "use chat.WithClassicPubSub"); n != 1 {
		t.Errorf("the advice was logged %d times, want once:\n%s", n, logs.String())
	}
}
