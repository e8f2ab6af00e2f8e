package chat

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatrelay/chat/internal/redistest"
	"github.com/chatrelay/chat/internal/wstest"
	"github.com/redis/go-redis/v9"
)

// Sharded Pub/Sub on a real Redis Cluster that each test starts itself
// (redistest.StartCluster: skipped where redis-server or redis-cli is
// missing, a failure when CHAT_REQUIRE_CLUSTER=1).

// clusterInstance is a Handler on cluster c, with no rate limit: the tests
// send as fast as they can.
func clusterInstance(t *testing.T, c *redistest.Cluster, opts ...Option) *instance {
	t.Helper()
	opts = append([]Option{WithRateLimit(0, 0)}, opts...)
	return newInstanceWith(t, c.Client(t), c.Client(t), opts...)
}

// roomsOnEveryMaster returns n rooms on each master of c, and each room's
// slot.
func roomsOnEveryMaster(t *testing.T, c *redistest.Cluster, n int) (rooms []string, slot map[string]int) {
	t.Helper()
	slot = make(map[string]int)
	per := make(map[*redistest.Server]int)
	for i := 0; len(rooms) < n*len(c.Masters); i++ {
		room := fmt.Sprintf("room%d", i)
		s := c.Slot(t, "chat:msg:{"+room+"}")
		if m := c.MasterOf(t, s); per[m] < n {
			per[m]++
			rooms = append(rooms, room)
			slot[room] = s
		}
	}
	return rooms, slot
}

// shardSubscribers counts the connections to node s that hold a sharded
// subscription (CLIENT LIST's ssub field).
func shardSubscribers(t *testing.T, s *redistest.Server) int {
	t.Helper()
	list, err := s.Client(t).ClientList(context.Background()).Result()
	must(t, err)
	n := 0
	for _, line := range strings.Split(list, "\n") {
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "ssub="); ok && v != "0" {
				n++
			}
		}
	}
	return n
}

// joinAll connects user to in and joins every room.
func joinAll(t *testing.T, in *instance, user string, rooms []string) *wstest.Conn {
	t.Helper()
	q := "user=" + user
	for _, r := range rooms {
		q += "&room=" + r
	}
	return in.connect(t, q)
}

// A room's messages travel only through its shard: clients on two
// instances chat in rooms on all three masters; each room's channel is a
// shard channel on its owner and on no other node; each instance holds one
// subscription connection per master; nothing uses classic Pub/Sub; and
// the cluster bus carries no publish message, presence notices and kicks
// included. With WithClassicPubSub every message is copied to both other
// masters.
func TestShardedPubSubOnCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	rooms, slot := roomsOnEveryMaster(t, c, 3)
	ctx := context.Background()

	for _, mode := range []struct {
		name     string
		opts     []Option
		perMsg   int64 // cluster bus publish messages per chat message
		channels bool  // shard channels expected on the owners
	}{
		{"sharded", nil, 0, true},
		{"classic", []Option{WithClassicPubSub()}, 2, false},
	} {
		t.Run(mode.name, func(t *testing.T) {
			start := c.PublishSent(t)
			a, b := clusterInstance(t, c, mode.opts...), clusterInstance(t, c, mode.opts...)
			// An observer, there first, sees the joins' presence notices:
			// once it has them all, they are behind the count taken next.
			obs := joinAll(t, a, "obs", rooms)
			obs.Presence = true
			ca, cb := joinAll(t, a, "ann", rooms), joinAll(t, b, "ben", rooms)
			for seen := map[string]bool{}; len(seen) < 2*len(rooms); {
				if f := obs.Next(t, "user_joined", wait); f["user"] != "obs" {
					seen[str(f["user"])+" "+str(f["room"])] = true
				}
			}
			before := c.PublishSent(t)
			for i, room := range rooms {
				sender := []*wstest.Conn{ca, cb}[i%2]
				text := "hello " + room
				must(t, sender.SendJSON(msgFrame(room, text, "")))
				for _, cl := range []*wstest.Conn{ca, cb} {
					if m := cl.Next(t, "message", wait); m["text"] != text || m["room"] != room {
						t.Fatalf("got %v, want %q in %s", m, text, room)
					}
				}
			}
			if got, want := c.PublishSent(t)-before, mode.perMsg*int64(len(rooms)); got != want {
				t.Errorf("cluster bus publish messages grew by %d for %d chat messages, want %d", got, len(rooms), want)
			}
			if !mode.channels {
				return
			}
			// Presence notices (above) and a kick go through the shard too.
			must(t, a.h.Kick(ctx, rooms[0], "ben"))
			if f := cb.Next(t, "left", wait); f["reason"] != "kicked" {
				t.Errorf("got %v", f)
			}
			if got := c.PublishSent(t) - start; got != 0 {
				t.Errorf("cluster bus publish messages grew by %d in sharded mode, joins, presence and kick included", got)
			}
			for _, room := range rooms {
				owner := c.MasterOf(t, slot[room])
				for _, node := range c.Masters {
					chans, err := node.Client(t).PubSubShardChannels(ctx, "chat:msg:{"+room+"}").Result()
					must(t, err)
					if listed := len(chans) == 1; listed != (node == owner) {
						t.Errorf("room %s (slot %d, owner %s): PUBSUB SHARDCHANNELS on %s = %v", room, slot[room], owner.Addr, node.Addr, chans)
					}
				}
			}
			for _, node := range c.Masters {
				if n := shardSubscribers(t, node); n != 2 {
					t.Errorf("%s: %d connections with sharded subscriptions, want 2 (one per instance)", node.Addr, n)
				}
				if chans := node.Client(t).PubSubChannels(ctx, "*").Val(); len(chans) > 0 {
					t.Errorf("%s: classic channels %v in sharded mode", node.Addr, chans)
				}
			}
		})
	}
}

// roomScene is one room of a cluster, with its master, a sender on
// instance a and a member on each of instances a and b.
type roomScene struct {
	room    string
	slot    int
	master  *redistest.Server
	a, b    *instance
	sender  *wstest.Conn
	members map[string]*wstest.Conn
}

func newRoomScene(t *testing.T, c *redistest.Cluster, opts ...Option) *roomScene {
	t.Helper()
	rooms, slot := roomsOnEveryMaster(t, c, 1)
	sc := &roomScene{room: rooms[0], slot: slot[rooms[0]]}
	sc.master = c.MasterOf(t, sc.slot)
	sc.a, sc.b = clusterInstance(t, c, opts...), clusterInstance(t, c, opts...)
	sc.sender = sc.a.connect(t, "room="+sc.room+"&user=sender")
	sc.members = map[string]*wstest.Conn{
		"a": sc.a.connect(t, "room="+sc.room+"&user=ann"),
		"b": sc.b.connect(t, "room="+sc.room+"&user=ben"),
	}
	return sc
}

// watch starts a seqWatcher on each member, reading until the message
// with text last.
func (sc *roomScene) watch(last string) []*seqWatcher {
	var ws []*seqWatcher
	for name, m := range sc.members {
		ws = append(ws, watchSeqs(name, m, sc.room, last))
	}
	return ws
}

// historyIDs returns the ids of room's messages in its history, by seq.
func historyIDs(t *testing.T, rc redis.UniversalClient, room string) map[int64]string {
	t.Helper()
	entries, err := rc.XRange(context.Background(), "chat:hist:{"+room+"}", "-", "+").Result()
	must(t, err)
	ids := make(map[int64]string, len(entries))
	for _, e := range entries {
		var m struct{ ID string }
		must(t, json.Unmarshal([]byte(str(e.Values["m"])), &m))
		seq, _, _ := strings.Cut(e.ID, "-")
		n, _ := strconv.ParseInt(seq, 10, 64)
		ids[n] = m.ID
	}
	return ids
}

// shutdown closes the clients, then shuts both instances down, and checks
// that no goroutine of the package is left.
func (sc *roomScene) shutdown(t *testing.T) {
	t.Helper()
	for _, c := range []*wstest.Conn{sc.sender, sc.members["a"], sc.members["b"]} {
		c.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, in := range []*instance{sc.a, sc.b} {
		if err := in.h.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	}
	noGoroutinesLeft(t)
}

// seqWatcher reads a member's frames on its own goroutine, until the
// message with text last, and checks that the room's seqs arrive gapless
// and in order: each one the last plus one, unless a "joined" with
// recovered:false came in between (an unfillable gap).
type seqWatcher struct {
	name   string
	mu     sync.Mutex
	last   float64
	got    int
	errs   []string
	reset  bool             // joined recovered:false seen since the last message
	gaps   int              // such joins in all
	joined int              // "joined" frames of any kind
	texts  map[string]int   // messages received, by text
	ids    map[int64]string // each message's id, by seq
	gapAt  []int64          // the member's last seq at each recovered:false
	at     []time.Time      // when each message came
	done   chan struct{}
}

// count returns how many messages with text have come.
func (w *seqWatcher) count(text string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.texts[text]
}

// maxPause returns the longest time between two messages. Called with
// w.mu held.
func (w *seqWatcher) maxPause() time.Duration {
	var longest time.Duration
	for i := 1; i < len(w.at); i++ {
		longest = max(longest, w.at[i].Sub(w.at[i-1]))
	}
	return longest
}

// firstAfter returns when the first message came after t; zero if none
// did. Called with w.mu held.
func (w *seqWatcher) firstAfter(t time.Time) time.Time {
	for _, at := range w.at {
		if at.After(t) {
			return at
		}
	}
	return time.Time{}
}

func watchSeqs(name string, c *wstest.Conn, room, last string) *seqWatcher {
	w := &seqWatcher{name: name, done: make(chan struct{}), texts: make(map[string]int), ids: make(map[int64]string)}
	go func() {
		defer close(w.done)
		for {
			m, err := c.ReadJSON(30 * time.Second)
			w.mu.Lock()
			if err != nil {
				w.errs = append(w.errs, err.Error())
				w.mu.Unlock()
				return
			}
			switch m["type"] {
			case "message":
				if m["room"] != room {
					break
				}
				seq, _ := m["seq"].(float64)
				if w.last != 0 && seq != w.last+1 && !w.reset {
					w.errs = append(w.errs, fmt.Sprintf("seq %v after %v", seq, w.last))
				}
				w.last, w.reset = seq, false
				w.got++
				text := str(m["text"])
				w.texts[text]++
				w.ids[int64(seq)] = str(m["id"])
				w.at = append(w.at, time.Now())
				if text == last {
					w.mu.Unlock()
					return
				}
			case "joined":
				w.joined++
				if m["recovered"] == false {
					w.reset = true
					w.gaps++
					w.gapAt = append(w.gapAt, int64(w.last))
				}
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *seqWatcher) check(t *testing.T) {
	t.Helper()
	select {
	case <-w.done:
	case <-time.After(40 * time.Second):
		t.Fatalf("%s: still reading", w.name)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, e := range w.errs {
		t.Errorf("%s: %s", w.name, e)
	}
}

// A room's master stalls for 3 s (DEBUG SLEEP) while clients on two
// instances send: the instances replace their silent connections to that
// master make-before-break, as on a single Redis, and nothing is lost; the
// old connections are closed once the new ones have taken over. (The node
// timeout is raised so that the cluster does not take the stall for a
// failure.)
func TestShardStallLosesNothing(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0, "--cluster-node-timeout", "15000", "--enable-debug-command", "local")
	rooms, slot := roomsOnEveryMaster(t, c, 1)
	master := c.MasterOf(t, slot[rooms[0]])
	stallLosesNothing(t, clusterInstance(t, c), clusterInstance(t, c), rooms[0], &backend{addr: master.Addr})
	eventually(t, wait, "one subscription connection per instance on the master again", func() bool {
		return shardSubscribers(t, master) == 2
	})
}

// Redis kills the instances' sharded subscription connections (CLIENT
// KILL TYPE pubsub on the room's master) while a sender keeps sending: the
// instances subscribe the room again on that master and fill the gap from
// the history, so the members get every seq, in order, once, and are never
// told they may have missed something.
func TestShardConnectionKilledGapFilled(t *testing.T) {
	sc := newRoomScene(t, redistest.StartCluster(t, 3, 0))
	const total = 60
	watchers := sc.watch(fmt.Sprint(total))
	for k := 1; k <= total; k++ {
		must(t, sc.sender.SendJSON(msgFrame(sc.room, fmt.Sprint(k), "")))
		if k == 10 {
			must(t, sc.master.Client(t).Do(context.Background(), "CLIENT", "KILL", "TYPE", "pubsub").Err())
		}
		time.Sleep(50 * time.Millisecond) // the pace of the traffic
	}
	for _, w := range watchers {
		w.check(t)
		if w.got != total || w.joined > 0 {
			t.Errorf("%s: %d of %d messages, %d joined frames: the gap should have been filled", w.name, w.got, total, w.joined)
		}
	}
	for _, in := range []*instance{sc.a, sc.b} {
		if s := in.h.Stats(); s.GapFills == 0 || s.SubscriptionReconnects == 0 {
			t.Errorf("Stats = %+v, want a reconnect and a gap fill counted", s)
		}
	}
	sc.shutdown(t)
}

// A room whose slot migrates to another master while messages flow keeps
// every member's seqs contiguous: the instances hear the old owner's
// sunsubscribe, subscribe on the new owner and fill the gap from the
// history. The channel is then on the new owner only, and the connections
// to the old owner, which carries none of the instances' rooms any more,
// are closed. Nothing is left running after Shutdown.
func TestSlotMigrationUnderTraffic(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	sc := newRoomScene(t, c)
	room, sender, from := sc.room, sc.sender, sc.master
	to := c.Masters[(slices.Index(c.Masters, from)+1)%len(c.Masters)]
	const total = 600
	watchers := sc.watch(fmt.Sprint("m ", total-1))
	var sent sync.WaitGroup
	moved := make(chan struct{})
	sent.Go(func() {
		for i := range total {
			if i == total/3 {
				<-moved // a third before the move, the rest during and after it
			}
			if err := sender.SendJSON(msgFrame(room, fmt.Sprint("m ", i), "")); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
	eventually(t, wait, "a third of the messages received", func() bool {
		watchers[0].mu.Lock()
		defer watchers[0].mu.Unlock()
		return watchers[0].got >= total/4
	})
	close(moved)
	c.MoveSlot(t, sc.slot, to)
	sent.Wait()
	for _, w := range watchers {
		w.check(t)
		if w.got != total || w.gaps > 0 {
			t.Errorf("%s: %d of %d messages, %d unfillable gaps", w.name, w.got, total, w.gaps)
		}
		// The instances subscribe on the new owner within milliseconds;
		// a pause of seconds would take more than the history to fill.
		if p := w.maxPause(); p > time.Second {
			t.Errorf("%s: messages stopped for %v during the move", w.name, p)
		} else {
			t.Logf("%s: longest pause between two messages %v", w.name, p.Round(time.Millisecond))
		}
	}
	// The sender's own copies arrive too: every message was accepted.
	for i := 0; i < total; i++ {
		sender.Next(t, "message", wait)
	}
	ctx := context.Background()
	for _, node := range c.Masters {
		chans := node.Client(t).PubSubShardChannels(ctx, "*").Val()
		if listed := slices.Contains(chans, "chat:msg:{"+room+"}"); listed != (node == to) {
			t.Errorf("after the move %s lists %v (moved from %s to %s)", node.Addr, chans, from.Addr, to.Addr)
		}
	}
	eventually(t, wait, "the old owner's subscription connections closed", func() bool {
		return shardSubscribers(t, from) == 0
	})
	if n := shardSubscribers(t, to); n != 2 {
		t.Errorf("new owner: %d subscription connections, want 2", n)
	}
	for _, in := range []*instance{sc.a, sc.b} {
		if g := in.h.Stats().GapFills; g == 0 {
			t.Errorf("no gap fill counted after the move")
		}
	}
	sc.shutdown(t)
}

// A master killed with SIGKILL in a cluster with replicas fails over; the
// members of its rooms get messages again within the cluster's failover
// time plus 3 s, with the gap filled from the history, or told
// recovered:false only where the replica had not received the member's
// last message (the new master's history holds another message at that
// seq, or none). The sender sends every 20 ms throughout, as a busy room
// would; its messages held during the failover are published once the new
// master takes them, possibly before the instances resubscribe, so the
// history is made long enough for them all.
func TestClusterFailover(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	sc := newRoomScene(t, c, WithHistory(1000))
	room, sender, dead := sc.room, sc.sender, sc.master
	watchers := sc.watch("end")
	endAnswer := make(chan string, 1) // the outcome of the last send
	go func() {                       // the sender's own frames
		for {
			f, err := sender.ReadJSON(time.Minute)
			switch {
			case err != nil:
				return
			case f["ref"] == "end" && f["type"] == "error":
				endAnswer <- str(f["code"])
			case f["text"] == "end":
				endAnswer <- "relayed"
				return
			}
		}
	}()
	stop := make(chan struct{})
	var sending sync.WaitGroup
	sending.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if err := sender.SendJSON(msgFrame(room, "m", "")); err != nil {
				t.Error(err)
				return
			}
		}
	})
	eventually(t, wait, "messages flowing", func() bool { return watchers[0].count("m") >= 25 })
	killed := time.Now()
	dead.Kill(t)
	newMaster := c.WaitFailover(t, sc.slot, dead, 30*time.Second)
	failedOver := time.Now()
	t.Logf("failover to %s took %v (at %s)", newMaster.Addr, failedOver.Sub(killed).Round(time.Millisecond), failedOver.Format("15:04:05.000"))
	eventually(t, 10*time.Second, "messages relayed again", func() bool {
		for _, w := range watchers {
			w.mu.Lock()
			back := w.firstAfter(killed)
			w.mu.Unlock()
			if back.IsZero() {
				return false
			}
		}
		return true
	})
	close(stop)
	sending.Wait()
	for range 10 {
		must(t, sender.SendJSON(msgFrame(room, "end", "end")))
		if <-endAnswer == "relayed" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	history := historyIDs(t, c.Client(t), room)
	for _, w := range watchers {
		w.check(t)
		w.mu.Lock()
		for _, at := range w.gapAt {
			if id, ok := history[at]; ok && id == w.ids[at] {
				t.Errorf("%s: recovered:false after seq %d, which Redis still holds: the gap could have been filled", w.name, at)
			}
		}
		back := w.firstAfter(killed).Sub(failedOver)
		if back > 3*time.Second {
			t.Errorf("%s: first message after the kill came %v after the failover, want within 3 s", w.name, back)
		}
		t.Logf("%s: %d messages, the first after the kill %v after the failover, %d unfillable gaps", w.name, w.got, back.Round(time.Millisecond), w.gaps)
		w.mu.Unlock()
	}
	sc.shutdown(t)
}

// An instance whose view of the cluster is stale subscribes a room on the
// master that owned its slot: that master answers MOVED, and the instance
// subscribes the room on its owner instead, promptly, and lets the other
// connection go.
func TestSlotMovedBeforeTheInstanceKnows(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	rooms, slot := roomsOnEveryMaster(t, c, 1)
	room := rooms[0]
	from := c.MasterOf(t, slot[room])
	to := c.Masters[(slices.Index(c.Masters, from)+1)%len(c.Masters)]
	ctx := context.Background()
	pub, sub := c.Client(t), c.Client(t)
	for _, cc := range []interface {
		Ping(context.Context) *redis.StatusCmd
	}{pub, sub} {
		must(t, cc.Ping(ctx).Err()) // both clients load the cluster's slots now
	}
	c.MoveSlot(t, slot[room], to)

	in := newInstanceWith(t, pub, sub)
	start := time.Now()
	ann := in.connect(t, "room="+room+"&user=ann")
	if d := time.Since(start); d > time.Second {
		t.Errorf("join took %v, want well under 1 s", d)
	}
	must(t, ann.SendJSON(msgFrame(room, "hello", "")))
	if m := ann.Next(t, "message", wait); m["text"] != "hello" {
		t.Fatalf("got %v", m)
	}
	if chans := to.Client(t).PubSubShardChannels(ctx, "*").Val(); !slices.Contains(chans, "chat:msg:{"+room+"}") {
		t.Errorf("owner %s lists %v", to.Addr, chans)
	}
	eventually(t, wait, "the connection to the former owner closed", func() bool {
		return shardSubscribers(t, from) == 0
	})
}
