package redistest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Keys of one room, in one slot through their hash tag, of the types the
// chat uses.
const (
	roomKey     = "chat:room:{lobby}"     // a string
	histKey     = "chat:hist:{lobby}"     // a stream
	presenceKey = "chat:presence:{lobby}" // a hash
)

// A 3-master cluster comes up with the masters in slot order, and a key set
// through the ClusterClient lands on MasterOf its slot.
func TestClusterStart(t *testing.T) {
	begin := time.Now()
	c := StartCluster(t, 3, 0)
	t.Logf("3-master cluster up in %v", time.Since(begin).Round(time.Millisecond))
	if len(c.Masters) != 3 || len(c.Replicas) != 0 || len(c.Nodes()) != 3 {
		t.Fatalf("%d masters, %d replicas, %d nodes; want 3, 0, 3", len(c.Masters), len(c.Replicas), len(c.Nodes()))
	}
	ids := map[string]bool{}
	for i, m := range c.Masters {
		if c.Addrs()[i] != m.Addr {
			t.Errorf("Addrs()[%d] = %s, Masters[%d].Addr = %s", i, c.Addrs()[i], i, m.Addr)
		}
		ids[m.NodeID(t)] = true
		// The i-th third of the slots, roughly: its middle is the i-th
		// master's.
		if mid := clusterSlots/6 + i*clusterSlots/3; c.MasterOf(t, mid) != m {
			t.Errorf("MasterOf(%d) = %s, want Masters[%d] %s", mid, c.MasterOf(t, mid).Addr, i, m.Addr)
		}
	}
	if len(ids) != 3 {
		t.Errorf("node IDs not distinct: %v", ids)
	}

	ctx := context.Background()
	if err := c.Client(t).Set(ctx, roomKey, "hello", 0).Err(); err != nil {
		t.Fatalf("SET through the ClusterClient: %v", err)
	}
	// 10294 is CRC16("lobby") mod 16384: the hash tag decides.
	slot := c.Slot(t, roomKey)
	if hist := c.Slot(t, histKey); slot != 10294 || hist != slot {
		t.Fatalf("Slot(%s), Slot(%s) = %d, %d; want 10294 for both", roomKey, histKey, slot, hist)
	}
	// A plain client reads it on its master without redirection; the
	// other masters hold nothing.
	owner := c.MasterOf(t, slot)
	if v, err := owner.Client(t).Get(ctx, roomKey).Result(); err != nil || v != "hello" {
		t.Fatalf("GET %s on MasterOf(%d) = %q, %v; want hello", roomKey, slot, v, err)
	}
	for _, m := range c.Masters {
		if n, err := m.Client(t).DBSize(ctx).Result(); m != owner && (err != nil || n != 0) {
			t.Errorf("DBSIZE on %s, not the owner = %d, %v; want 0", m.Addr, n, err)
		}
	}
}

// A classic PUBLISH is broadcast over the cluster bus, an SPUBLISH with no
// replicas to tell is not.
func TestClusterPublishSent(t *testing.T) {
	c := StartCluster(t, 3, 0)
	ctx := context.Background()
	before := c.PublishSent(t)
	if err := c.Masters[0].Client(t).Publish(ctx, "chat:events", "x").Err(); err != nil {
		t.Fatalf("PUBLISH: %v", err)
	}
	afterPublish := c.PublishSent(t)
	if afterPublish-before != 2 {
		t.Errorf("PublishSent went from %d to %d after one PUBLISH; want +2 (to each other node)", before, afterPublish)
	}
	owner := c.MasterOf(t, c.Slot(t, roomKey))
	if err := owner.Client(t).SPublish(ctx, roomKey, "x").Err(); err != nil {
		t.Fatalf("SPUBLISH on the channel's master: %v", err)
	}
	if got := c.PublishSent(t); got != afterPublish {
		t.Errorf("PublishSent went from %d to %d after an SPUBLISH; want no change", afterPublish, got)
	}
}

// MoveSlot moves a slot holding a string, a hash and a stream to another
// master while a client keeps running a script on them: nothing is lost,
// the script never fails, and every master names the new owner.
func TestMoveSlot(t *testing.T) {
	c := StartCluster(t, 3, 0)
	ctx := context.Background()
	cc := c.Client(t)
	slot := c.Slot(t, roomKey)
	from := c.MasterOf(t, slot)
	to := c.Masters[0]
	if to == from {
		to = c.Masters[1]
	}
	if err := cc.Set(ctx, roomKey, "0", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if err := cc.HSet(ctx, presenceKey, "n", "0", "alice", "1").Err(); err != nil {
		t.Fatalf("HSET: %v", err)
	}
	if err := cc.XAdd(ctx, &redis.XAddArgs{Stream: histKey, Values: []string{"n", "0"}}).Err(); err != nil {
		t.Fatalf("XADD: %v", err)
	}
	// More keys than one MIGRATE moves, so that the move takes a while
	// and the script's keys may be moved in different batches.
	const others = 3 * migrateBatch
	if _, err := cc.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range others {
			p.Set(ctx, "chat:msg:{lobby}:"+strconv.Itoa(i), i, 0)
		}
		return nil
	}); err != nil {
		t.Fatalf("SET of %d keys: %v", others, err)
	}

	// The script writes all three keys, as a message post would.
	const post = `redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[3], 'n', ARGV[1])
return redis.call('XADD', KEYS[2], '*', 'n', ARGV[1])`
	var (
		wg      sync.WaitGroup
		running = make(chan struct{}) // closed after the first post
		moved   = make(chan struct{}) // closed when MoveSlot returned
		posts   atomic.Int64          // successful posts, the last one's ARGV[1]
		errs    []error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for after := 0; after < 20; {
			n := posts.Load() + 1
			if err := cc.Eval(ctx, post, []string{roomKey, histKey, presenceKey}, n).Err(); err != nil {
				if errs = append(errs, err); len(errs) > 10 {
					break
				}
			} else if posts.Store(n); n == 1 {
				close(running)
			}
			select {
			case <-moved:
				after++ // some posts after the move too
			default:
			}
		}
		if posts.Load() == 0 {
			close(running)
		}
	}()
	<-running
	begin, before := time.Now(), posts.Load()
	c.MoveSlot(t, slot, to)
	t.Logf("MoveSlot took %v, %d posts meanwhile", time.Since(begin).Round(time.Millisecond), posts.Load()-before)
	close(moved)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d posts failed, first: %v", len(errs), errs[0])
	}

	for _, m := range c.Masters {
		table, err := shardsOf(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		if owner := table.owner(slot); owner != to.Addr {
			t.Errorf("%s says slot %d is %s's, want %s's", m.Addr, slot, owner, to.Addr)
		}
	}
	if got := c.MasterOf(t, slot); got != to {
		t.Errorf("MasterOf(%d) = %s, want %s", slot, got.Addr, to.Addr)
	}
	for s, want := range map[*Server]int64{from: 0, to: 3 + others} {
		if n, err := s.Client(t).ClusterCountKeysInSlot(ctx, slot).Result(); err != nil || n != want {
			t.Errorf("CLUSTER COUNTKEYSINSLOT %d on %s = %d, %v; want %d", slot, s.Addr, n, err, want)
		}
	}
	last := strconv.FormatInt(posts.Load(), 10)
	if v, err := cc.Get(ctx, roomKey).Result(); err != nil || v != last {
		t.Errorf("GET %s = %q, %v; want %s", roomKey, v, err, last)
	}
	if v, err := cc.HGetAll(ctx, presenceKey).Result(); err != nil || v["n"] != last || v["alice"] != "1" {
		t.Errorf("HGETALL %s = %v, %v; want n=%s alice=1", presenceKey, v, err, last)
	}
	if n, err := cc.XLen(ctx, histKey).Result(); err != nil || n != posts.Load()+1 {
		t.Errorf("XLEN %s = %d, %v; want %d", histKey, n, err, posts.Load()+1)
	}
}

// A key on both ends of a migration is moved if both copies are the same
// and is otherwise left alone, failing the move.
func TestMoveSlotBusyKey(t *testing.T) {
	c := StartCluster(t, 3, 0)
	ctx := context.Background()
	slot := c.Slot(t, roomKey)
	from := c.MasterOf(t, slot)
	to := c.Masters[0]
	if to == from {
		to = c.Masters[1]
	}
	same, differs := "chat:same:{lobby}", "chat:differs:{lobby}"
	src := from.Client(t)
	for _, k := range []string{same, differs} {
		if err := src.Set(ctx, k, "source", 0).Err(); err != nil {
			t.Fatalf("SET %s on the source: %v", k, err)
		}
	}
	for s, args := range map[*Server][]any{to: {"IMPORTING", from.NodeID(t)}, from: {"MIGRATING", to.NodeID(t)}} {
		if err := s.Client(t).Do(ctx, append([]any{"CLUSTER", "SETSLOT", slot}, args...)...).Err(); err != nil {
			t.Fatalf("CLUSTER SETSLOT %d %v on %s: %v", slot, args, s.Addr, err)
		}
	}
	// Write on the target the way an ASK redirection would, though the
	// source holds the keys.
	conn := to.Client(t).Conn()
	defer conn.Close()
	for k, v := range map[string]string{same: "source", differs: "target"} {
		if err := conn.Do(ctx, "ASKING").Err(); err != nil {
			t.Fatalf("ASKING: %v", err)
		}
		if err := conn.Set(ctx, k, v, 0).Err(); err != nil {
			t.Fatalf("SET %s on the target: %v", k, err)
		}
	}

	err := migrateKeys(ctx, slot, from, to)
	if err == nil || !strings.Contains(err.Error(), differs) || !strings.Contains(err.Error(), "different values") {
		t.Fatalf("migrateKeys = %v; want an error naming %s", err, differs)
	}
	// (EXISTS on the source would answer ASK for a key it lacks.)
	if keys, err := src.ClusterGetKeysInSlot(ctx, slot, 10).Result(); err != nil || len(keys) != 1 || keys[0] != differs {
		t.Errorf("CLUSTER GETKEYSINSLOT on the source = %q, %v; want only %s (%s moved)", keys, err, differs, same)
	}
	for k, want := range map[string]string{same: "source", differs: "target"} {
		if err := conn.Do(ctx, "ASKING").Err(); err != nil {
			t.Fatalf("ASKING: %v", err)
		}
		if v, err := conn.Get(ctx, k).Result(); err != nil || v != want {
			t.Errorf("GET %s on the target = %q, %v; want %q", k, v, err, want)
		}
	}
	if v, err := src.Get(ctx, differs).Result(); err != nil || v != "source" {
		t.Errorf("GET %s on the source = %q, %v; want source (left alone)", differs, v, err)
	}
}

// With a replica per master, killing a master makes its replica take over
// its slots, and the replica has its data.
func TestClusterFailover(t *testing.T) {
	begin := time.Now()
	c := StartCluster(t, 3, 1)
	t.Logf("3 masters + 3 replicas up in %v", time.Since(begin).Round(time.Millisecond))
	ctx := context.Background()
	if len(c.Masters) != 3 || len(c.Replicas) != 3 || len(c.Nodes()) != 6 {
		t.Fatalf("%d masters, %d replicas, %d nodes; want 3, 3, 6", len(c.Masters), len(c.Replicas), len(c.Nodes()))
	}
	for i, r := range c.Replicas {
		info, err := r.Client(t).Info(ctx, "replication").Result()
		if err != nil {
			t.Fatalf("INFO replication on %s: %v", r.Addr, err)
		}
		if _, port, _ := strings.Cut(c.Masters[i].Addr, ":"); !strings.Contains(info, "master_port:"+port+"\r\n") {
			t.Errorf("Replicas[%d] %s does not replicate Masters[%d] %s:\n%s", i, r.Addr, i, c.Masters[i].Addr, info)
		}
	}

	slot := c.Slot(t, roomKey)
	dead := c.MasterOf(t, slot)
	rc := dead.Client(t)
	if err := rc.Set(ctx, roomKey, "kept", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if n, err := rc.Wait(ctx, 1, 5*time.Second).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT 1 = %d, %v; want the replica to acknowledge", n, err)
	}
	var replica *Server
	for i, m := range c.Masters {
		if m == dead {
			replica = c.Replicas[i]
		}
	}

	dead.Kill(t)
	begin = time.Now()
	owner := c.WaitFailover(t, slot, dead, 10*time.Second)
	t.Logf("failover in %v", time.Since(begin).Round(time.Millisecond))
	if owner != replica {
		t.Fatalf("WaitFailover = %s, want %s, the killed master's replica", owner.Addr, replica.Addr)
	}
	if got := c.MasterOf(t, slot); got != owner {
		t.Errorf("MasterOf(%d) = %s, want %s", slot, got.Addr, owner.Addr)
	}
	if v, err := owner.Client(t).Get(ctx, roomKey).Result(); err != nil || v != "kept" {
		t.Errorf("GET %s on the new master = %q, %v; want kept", roomKey, v, err)
	}

	// Restarted, the old master keeps its identity and rejoins as a
	// replica of the new one, syncing the data it lost.
	begin = time.Now()
	dead.Restart(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := rc.Info(ctx, "replication").Result()
		_, port, _ := strings.Cut(owner.Addr, ":")
		if err == nil && strings.Contains(info, "role:slave") && strings.Contains(info, "master_port:"+port+"\r\n") &&
			strings.Contains(info, "master_link_status:up") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted master did not become %s's replica: %v\n%s", owner.Addr, err, info)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("old master restarted and synced as a replica in %v", time.Since(begin).Round(time.Millisecond))
	if got := c.MasterOf(t, slot); got != owner {
		t.Errorf("MasterOf(%d) after the restart = %s, want %s", slot, got.Addr, owner.Addr)
	}
}

// Without redis-cli StartCluster skips the test, naming what is missing,
// and counts it for ReportSkips.
func TestClusterSkippedWithoutRedisCli(t *testing.T) {
	server, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not found in PATH")
	}
	bin := t.TempDir()
	if err := os.Symlink(server, filepath.Join(bin, "redis-server")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin)
	t.Setenv("CHAT_REQUIRE_CLUSTER", "")
	t.Setenv("CHAT_REQUIRE_REDIS", "")
	before := skipped.Load()
	var sub *testing.T
	t.Run("StartCluster", func(t *testing.T) {
		sub = t
		StartCluster(t, 3, 0)
		t.Error("StartCluster returned without redis-cli")
	})
	if !sub.Skipped() {
		t.Error("StartCluster did not skip without redis-cli")
	}
	if n := skipped.Load() - before; n != 1 {
		t.Errorf("skip counter grew by %d, want 1", n)
	}
	skipped.Add(before - skipped.Load()) // this skip was on purpose: do not report it
}

// freeClusterPort leaves room for the cluster bus port above it.
func TestFreeClusterPort(t *testing.T) {
	for range 20 {
		p, err := freeClusterPort()
		if err != nil {
			t.Fatal(err)
		}
		if p <= 0 || p+busPortOffset > 65535 {
			t.Fatalf("freeClusterPort = %d: no room for its bus port %d", p, p+busPortOffset)
		}
	}
}
