//go:build !race

// The race detector allows at most 8128 live goroutines; this test runs
// about 20,000 (both ends of 10,000 connections), so it is built without it.

package chat

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chatrelay/chat/internal/demotest"
	"github.com/chatrelay/chat/internal/wstest"
)

// 10,000 connections over two instances, in 1,000 rooms of 10 with members
// on both instances; one member of each room sends messages. Every member
// gets every message of its room, in order; the servers' memory per
// connection stays small and does not grow with messaging; once everyone
// left, the instances hold no subscription.
//
// The two instances run in a child process (the demo, see demotest), so that
// each process keeps its 10,000 descriptors under the usual limit of 20,000,
// and the servers' memory is their real RSS.
func TestLoad10kConnections(t *testing.T) {
	if os.Getenv("CHAT_LOAD") != "1" {
		t.Skip("set CHAT_LOAD=1 to run the 10,000-connection load test (about 30 s; CI runs it)")
	}
	const conns, roomSize, perSender = 10_000, 10, 5
	const rooms = conns / roomSize
	raiseFileLimit(t, conns+1000)
	be := realRedis(t)
	addrs := []string{demotest.FreeAddr(t), demotest.FreeAddr(t)}
	// Every client dials from 127.0.0.1: no per-IP cap.
	demo := demotest.Start(t, "load", addrs, "-redis", "redis://"+be.addr, "-rate-limit", "0", "-max-conns-per-ip", "0")
	baseline := rss(t, demo)

	start := time.Now()
	urls := make([]string, conns)
	for i := range urls {
		room := i / roomSize
		urls[i] = fmt.Sprintf("ws://%s/chat?room=load-%d&user=u%d", addrs[(i+room)%2], room, i)
	}
	clients := dialJoined(t, urls)
	connected := rss(t, demo)
	perConn := float64(connected-baseline) / conns
	t.Logf("%d connections joined %d rooms in %v; server RSS %d -> %d KiB, %.1f KiB per connection",
		conns, rooms, time.Since(start).Round(time.Millisecond), baseline, connected, perConn)
	if perConn > 24 {
		t.Errorf("server RSS grew %.1f KiB per idle connection, want at most 24", perConn)
	}

	// A round: one member of each room sends perSender messages; every
	// member reads its room's, in order, on its own goroutine.
	chatRound := func(round int) {
		start := time.Now()
		text := func(sender, k int) string { return fmt.Sprintf("%d-%d-%d", round, sender, k) }
		results := make(chan error, conns)
		for i, c := range clients {
			go func() {
				sender := i / roomSize * roomSize
				for k := 0; k < perSender; k++ {
					m, err := c.ReadJSON(30 * time.Second)
					if err == nil && (m["type"] != "message" || m["text"] != text(sender, k)) {
						err = fmt.Errorf("round %d, client %d: message %d is %v", round, i, k, m)
					}
					if err != nil {
						results <- err
						return
					}
				}
				results <- nil
			}()
		}
		for r := 0; r < rooms; r++ {
			sender := clients[r*roomSize]
			go func() {
				for k := 0; k < perSender; k++ {
					if err := sender.SendJSON(msgFrame(fmt.Sprintf("load-%d", r), text(r*roomSize, k), "")); err != nil {
						results <- err
						return
					}
				}
			}()
		}
		for i := 0; i < conns; i++ {
			if err := <-results; err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("round %d: %d messages, %d deliveries, all in order, in %v",
			round, rooms*perSender, conns*perSender, time.Since(start).Round(time.Millisecond))
	}
	// Memory stays bounded. The first rounds grow stacks and buffers to
	// their working size and let garbage fill the heap up to the GC's goal,
	// which can still take one step up (seen: 204 MB after round 5, 230
	// after round 7, then flat to round 16; 26 MB is 2.6 KiB per
	// connection). So the test looks at eight rounds after round 8: one
	// such step fits in 3 KiB per connection, a leak does not (3 KiB over
	// 40 deliveries to each member is 75 bytes per delivery, and a leak
	// keeps growing with every round). The total stays under a ceiling.
	const rounds, settled = 16, 8
	var atSettled, last uint64
	for round := 1; round <= rounds; round++ {
		chatRound(round)
		last = rss(t, demo)
		if round == settled {
			atSettled = last
		}
	}
	t.Logf("server RSS: %d KiB connected, %d after round %d, %d after round %d", connected, atSettled, settled, last, rounds)
	if grown := (float64(last) - float64(atSettled)) / conns; grown > 3 {
		t.Errorf("server RSS grew %.1f KiB per connection over rounds %d-%d, want at most 3: memory grows with messaging", grown, settled+1, rounds)
	}
	if total := float64(last-baseline) / conns; total > 32 {
		t.Errorf("server RSS is %.1f KiB per connection after chatting, want at most 32", total)
	}

	for _, c := range clients {
		c.Close()
	}
	rdb := be.client(t)
	eventually(t, 30*time.Second, "rooms still subscribed after every client left", func() bool {
		chs, err := rdb.PubSubChannels(context.Background(), "chat:msg:*").Result()
		return err == nil && len(chs) == 0
	})
}

// rss is the demo's resident memory in KiB, after the dust settles.
func rss(t *testing.T, d *demotest.Demo) uint64 {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.PID()))
	must(t, err)
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kib uint64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kib)
			return kib
		}
	}
	t.Fatal("no VmRSS in /proc status")
	return 0
}

// raiseFileLimit makes room for n open files, raising the hard limit too
// where the process may.
func raiseFileLimit(t *testing.T, n uint64) {
	var lim syscall.Rlimit
	must(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
	if lim.Cur >= n {
		return
	}
	lim.Cur = n
	lim.Max = max(lim.Max, n)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("need %d open files; raising RLIMIT_NOFILE failed (%v): raise ulimit -n", n, err)
	}
}

// dialJoined connects to every URL, 50 at a time, and waits for each
// connection's "joined" (one room per URL); it fails the test on the first
// error. clients[i] is urls[i]'s connection.
func dialJoined(t *testing.T, urls []string) (clients []*wstest.Conn) {
	t.Helper()
	clients = make([]*wstest.Conn, len(urls))
	errs := make(chan error, len(urls))
	next := make(chan int)
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			for i := range next {
				c, _, err := wstest.Dial(t, urls[i], nil)
				if err == nil {
					var f map[string]any
					if f, err = c.ReadJSON(30 * time.Second); err == nil && f["type"] != "joined" {
						err = fmt.Errorf("first frame %v", f)
					}
				}
				if err != nil {
					errs <- fmt.Errorf("%s: %w", urls[i], err)
					continue
				}
				clients[i] = c
			}
		})
	}
	for i := range urls {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("connect: %v", err)
	}
	return clients
}
