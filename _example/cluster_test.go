package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatrelay/chat/internal/demotest"
	"github.com/chatrelay/chat/internal/redistest"
	"github.com/chatrelay/chat/internal/wstest"
)

// wait bounds anything that should happen at once.
const wait = 10 * time.Second

// The demo on a Redis Cluster (-redis-cluster), two instances in one
// process: clients on different instances chat in a room, /healthz says
// ok, and the log names the Pub/Sub mode. Sharded (the default), the
// room's channel is a shard channel on the master that owns its slot and
// on no other node; with -classic-pubsub it is a classic channel and no
// node has shard channels.
func TestClusterDemoChatsAcrossInstances(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	ctx := context.Background()
	for _, mode := range []struct {
		name  string
		flags []string
	}{
		{"sharded", nil},
		{"classic", []string{"-classic-pubsub"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			args := append([]string{"-addr", "127.0.0.1:0,127.0.0.1:0", "-redis-cluster", strings.Join(c.Addrs(), ",")}, mode.flags...)
			addrs, log := startDemo(t, args)
			for _, a := range addrs {
				if body := get(t, "http://"+a+"/healthz"); body != "ok\n" {
					t.Errorf("%s/healthz: %q, want ok", a, body)
				}
			}

			room := "lobby-" + mode.name // each mode its own keys
			ann := join(t, addrs[0], room, "ann")
			ben := join(t, addrs[1], room, "ben")
			for i, sender := range []*wstest.Conn{ann, ben} {
				text := fmt.Sprintf("hello %d", i)
				if err := sender.SendJSON(map[string]any{"type": "message", "room": room, "text": text}); err != nil {
					t.Fatal(err)
				}
				for _, member := range []*wstest.Conn{ann, ben} {
					if m := member.Next(t, "message", wait); m["text"] != text || m["room"] != room {
						t.Fatalf("got %v, want %q in %s", m, text, room)
					}
				}
			}

			channel := "chat:msg:{" + room + "}"
			owner := c.MasterOf(t, c.Slot(t, channel))
			for _, node := range c.Masters {
				shard, err := node.Client(t).PubSubShardChannels(ctx, "*").Result()
				if err != nil {
					t.Fatalf("PUBSUB SHARDCHANNELS on %s: %v", node.Addr, err)
				}
				listed := slices.Contains(shard, channel)
				switch {
				case mode.name == "sharded" && listed != (node == owner):
					t.Errorf("%s (owner of %s: %s) lists shard channels %v", node.Addr, channel, owner.Addr, shard)
				case mode.name == "classic" && len(shard) > 0:
					t.Errorf("%s lists shard channels %v with -classic-pubsub", node.Addr, shard)
				}
			}
			if mode.name == "classic" && !classicSubscribed(t, c, channel) {
				t.Errorf("no node lists %s in PUBSUB CHANNELS with -classic-pubsub", channel)
			}
			if want := "pubsub=" + mode.name; strings.Count(log.String(), want) != len(addrs) {
				t.Errorf("want one start line with %s per instance; log:\n%s", want, log)
			}
		})
	}
}

// classicSubscribed reports whether some node of c has a classic
// subscriber of channel.
func classicSubscribed(t *testing.T, c *redistest.Cluster, channel string) bool {
	t.Helper()
	for _, node := range c.Masters {
		chans, err := node.Client(t).PubSubChannels(context.Background(), channel).Result()
		if err != nil {
			t.Fatalf("PUBSUB CHANNELS on %s: %v", node.Addr, err)
		}
		if len(chans) > 0 {
			return true
		}
	}
	return false
}

// -redis-cluster excludes -redis, and needs host:port addresses: a usage
// error (exit status 2), before anything is started.
func TestClusterFlagUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-redis", "redis://127.0.0.1:6379", "-redis-cluster", "127.0.0.1:7000"},
		{"-redis-cluster", "127.0.0.1:7000", "-redis", ""},
		{"-redis-cluster", " , "},
		{"-redis-cluster", "127.0.0.1"},
	} {
		var stderr bytes.Buffer
		if code := cli(context.Background(), args, &stderr, nil); code != 2 {
			t.Errorf("%q: exit status %d, want 2 (%s)", args, code, &stderr)
		}
		if !strings.Contains(stderr.String(), "-redis-cluster") {
			t.Errorf("%q: the error does not name -redis-cluster: %q", args, &stderr)
		}
	}
}

// A -redis-cluster where no node answers stops the demo at start, with
// exit status 1, as an unreachable -redis does.
func TestUnreachableClusterFailsFast(t *testing.T) {
	dead := demotest.FreeAddr(t) // nothing listens there
	start := time.Now()
	var stderr bytes.Buffer
	if code := cli(context.Background(), []string{"-addr", "127.0.0.1:0", "-redis-cluster", dead}, &stderr, nil); code != 1 {
		t.Fatalf("run with an unreachable cluster returned %d, want 1 (%s)", code, &stderr)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %v to give up, want a few seconds at most", took)
	}
	if !strings.Contains(stderr.String(), "cannot reach Redis (cluster "+dead+")") {
		t.Errorf("stderr %q does not say which cluster it could not reach", &stderr)
	}
}

// startDemo runs the demo in this process with args (which should listen
// on 127.0.0.1:0) until the test ends, then checks that it stopped with
// status 0. It returns the instances' addresses once they listen, and the
// demo's log.
func startDemo(t *testing.T, args []string) ([]string, *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := &syncBuffer{}
	listening := make(chan []string, 1)
	exited := make(chan int, 1)
	go func() {
		exited <- cli(ctx, args, log, func(addrs []string) { listening <- addrs })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-exited:
			if code != 0 {
				t.Errorf("demo exited with status %d, want 0; log:\n%s", code, log)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("demo still running 15 s after its context ended")
		}
	})
	select {
	case addrs := <-listening:
		return addrs, log
	case code := <-exited:
		t.Fatalf("demo %q exited with status %d before listening; log:\n%s", args, code, log)
	case <-time.After(wait):
		t.Fatalf("demo %q not listening after %v; log:\n%s", args, wait, log)
	}
	return nil, nil
}

// join connects user to the instance at addr, in room, and waits until it
// has joined.
func join(t *testing.T, addr, room, user string) *wstest.Conn {
	t.Helper()
	c := wstest.MustDial(t, "ws://"+addr+"/chat?room="+room+"&user="+user, nil)
	c.Next(t, "joined", wait)
	return c
}

// get returns the body of a GET of url, failing the test on an error.
func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return string(body)
}

// syncBuffer is a bytes.Buffer for a log written by several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
