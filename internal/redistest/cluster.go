package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	busPortOffset     = 10000            // a node's cluster bus listens on its port + 10000
	clusterSlots      = 16384            // hash slots in a Redis Cluster
	clusterUpTimeout  = 30 * time.Second // StartCluster: redis-cli plus the wait for agreement
	clusterAgreeWait  = 10 * time.Second // MasterOf: the wait for the nodes to agree
	moveSlotTimeout   = 30 * time.Second // MoveSlot: the whole move
	clusterPollPeriod = 20 * time.Millisecond
	migrateBatch      = 100  // keys per MIGRATE, as CLUSTER GETKEYSINSLOT returns them
	migrateTimeoutMS  = 2000 // MIGRATE's timeout for talking to the target
)

// clusterArgs are the server arguments of every cluster node, before the
// caller's (which may override them).
var clusterArgs = []string{
	"--cluster-enabled", "yes",
	"--cluster-config-file", "nodes.conf", // in the node's own directory
	// A killed master is flagged failing after 1 s (the default is 15 s), so
	// a replica takes over within a few seconds.
	"--cluster-node-timeout", "1000",
	// A replica then tries to take over however long its master had been
	// silent (it pings replicas every 10 s) and the election has taken; by
	// default it gives up once that passes 10 node timeouts plus those
	// 10 s, and the test would wait for nothing.
	"--cluster-replica-validity-factor", "0",
	// A replica's first sync starts at once instead of after 5 s spent
	// waiting for more replicas to share the transfer.
	"--repl-diskless-sync-delay", "0",
}

// Cluster is a Redis Cluster of redis-server child processes owned by one test.
type Cluster struct {
	Masters  []*Server // Masters[i] owned the i-th equal share of the slots when created
	Replicas []*Server // Replicas[i] replicated Masters[i % len(Masters)] when created (may be empty)

	addrs []string // the masters' addresses at creation
}

// StartCluster starts masters+masters*replicasPerMaster redis-server processes with
// --cluster-enabled yes (plus args), creates the cluster with
// `redis-cli --cluster create ... --cluster-replicas N --cluster-yes`, and waits until every
// node reports cluster_state:ok and all agree on slot ownership.
// Skipped with a clear message when redis-server or redis-cli is missing; a failure instead
// when CHAT_REQUIRE_CLUSTER=1 (or CHAT_REQUIRE_REDIS=1). Everything is killed at t.Cleanup.
//
// Each node is a Server as Start makes it (own directory, log, Kill,
// Restart), with these arguments before args: --cluster-config-file
// nodes.conf, --cluster-node-timeout 1000 and
// --cluster-replica-validity-factor 0, so that a replica replaces a killed
// master within a few seconds, and --repl-diskless-sync-delay 0. masters
// must be at least 3, as redis-cli requires. StartCluster also waits until
// every node knows every other and every replica has synced with its
// master. A restarted node keeps its cluster identity (nodes.conf is in its
// directory) but not its data: it rejoins as a replica if one took over
// its slots meanwhile, and otherwise serves them again, empty.
func StartCluster(t testing.TB, masters, replicasPerMaster int, args ...string) *Cluster {
	t.Helper()
	bins := requireBinaries(t, []string{"CHAT_REQUIRE_CLUSTER", "CHAT_REQUIRE_REDIS"},
		"install it (apt-get install redis-server brings redis-server and redis-cli) or set CHAT_REQUIRE_CLUSTER=1 to make this a failure",
		"redis-server", "redis-cli")
	if masters < 3 || replicasPerMaster < 0 {
		t.Fatalf("redistest.StartCluster(%d, %d): want at least 3 masters and no negative replica count", masters, replicasPerMaster)
	}
	nodeArgs := append(slices.Clone(clusterArgs), args...)
	nodes := make([]*Server, masters*(1+replicasPerMaster))
	for i := range nodes {
		s, err := launch(t, bins[0], freeClusterPort, nodeArgs)
		if err != nil {
			t.Fatalf("redistest.StartCluster: node %d: %v", i, err)
		}
		nodes[i] = s
	}

	ctx, cancel := context.WithTimeout(context.Background(), clusterUpTimeout)
	defer cancel()
	cli := []string{"--cluster", "create"}
	for _, s := range nodes {
		cli = append(cli, s.Addr)
	}
	cli = append(cli, "--cluster-replicas", strconv.Itoa(replicasPerMaster), "--cluster-yes")
	if out, err := exec.CommandContext(ctx, bins[1], cli...).CombinedOutput(); err != nil {
		t.Fatalf("redistest.StartCluster: redis-cli %s: %v\n%s", strings.Join(cli, " "), err, out)
	}

	var view []nodeEntry
	err := poll(ctx, func() (err error) {
		view, err = clusterUp(ctx, nodes, masters, replicasPerMaster)
		return err
	})
	if err != nil {
		t.Fatalf("redistest.StartCluster: the cluster did not come up within %v: %v", clusterUpTimeout, err)
	}
	c, err := arrange(view, nodes, masters)
	if err != nil {
		t.Fatalf("redistest.StartCluster: %v", err)
	}
	return c
}

// Addrs returns the masters' addresses at creation, for ClusterOptions.Addrs.
func (c *Cluster) Addrs() []string { return slices.Clone(c.addrs) }

// Client returns a new ClusterClient on Addrs, closed at t.Cleanup.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// Nodes returns all servers, masters first (in the order of Masters, then
// Replicas).
func (c *Cluster) Nodes() []*Server {
	return append(slices.Clone(c.Masters), c.Replicas...)
}

// Slot returns the hash slot of key, by CLUSTER KEYSLOT on a live node.
func (c *Cluster) Slot(t testing.TB, key string) int {
	t.Helper()
	var err error
	for _, s := range c.live() {
		var slot int64
		if slot, err = s.adminClient().ClusterKeySlot(context.Background(), key).Result(); err == nil {
			return int(slot)
		}
		err = fmt.Errorf("%s: %w", s.Addr, err)
	}
	t.Fatalf("redistest: CLUSTER KEYSLOT %q: no live node answered (%v)", key, err)
	return 0
}

// MasterOf returns the live master owning slot now, by the CLUSTER SHARDS
// of every live node. While they disagree, or name a killed node, it waits (up
// to 10 s) for a change to settle; then it fails the test. After killing a
// master, use WaitFailover instead.
func (c *Cluster) MasterOf(t testing.TB, slot int) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterAgreeWait)
	defer cancel()
	var owner *Server
	err := poll(ctx, func() (err error) {
		owner, err = c.agreedOwner(ctx, slot)
		return err
	})
	if err != nil {
		t.Fatalf("redistest: MasterOf(%d): %v", slot, err)
	}
	return owner
}

// MoveSlot migrates slot with its keys to master `to`, the way redis-cli --cluster reshard does:
// CLUSTER SETSLOT slot IMPORTING <from-id> on to, SETSLOT slot MIGRATING <to-id> on from,
// then CLUSTER GETKEYSINSLOT + MIGRATE host port "" 0 timeout KEYS k... in batches until the slot is empty,
// then SETSLOT slot NODE <to-id> on to, then on from, then on every other master; it returns once
// every live master reports `to` as the slot's owner.
//
// from is MasterOf(slot); moving a slot to its owner does nothing. Clients
// may keep using the slot's keys meanwhile: the source serves the keys it
// still holds and redirects the others with ASK (or answers TRYAGAIN to a
// command on several keys of which it holds only some).
func (c *Cluster) MoveSlot(t testing.TB, slot int, to *Server) {
	t.Helper()
	from := c.MasterOf(t, slot)
	if from == to {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), moveSlotTimeout)
	defer cancel()
	fail := func(format string, a ...any) {
		t.Helper()
		t.Fatalf("redistest: MoveSlot(%d) from %s to %s: %s", slot, from.Addr, to.Addr, fmt.Sprintf(format, a...))
	}
	fromID, toID := from.NodeID(t), to.NodeID(t)
	setSlot := func(s *Server, state, id string) {
		t.Helper()
		if err := s.adminClient().Do(ctx, "CLUSTER", "SETSLOT", slot, state, id).Err(); err != nil {
			fail("CLUSTER SETSLOT %d %s %s on %s: %v", slot, state, id, s.Addr, err)
		}
	}
	setSlot(to, "IMPORTING", fromID)
	setSlot(from, "MIGRATING", toID)
	if err := migrateKeys(ctx, slot, from, to); err != nil {
		fail("%v", err)
	}
	setSlot(to, "NODE", toID)
	setSlot(from, "NODE", toID)
	masters, err := c.liveMasters(ctx)
	if err != nil {
		fail("%v", err)
	}
	for _, m := range masters {
		if m != from && m != to {
			setSlot(m, "NODE", toID)
		}
	}
	err = poll(ctx, func() error {
		for _, m := range masters {
			table, err := shardsOf(ctx, m)
			if err != nil {
				return err
			}
			if owner := table.owner(slot); owner != to.Addr {
				return fmt.Errorf("%s says %q owns it", m.Addr, owner)
			}
		}
		return nil
	})
	if err != nil {
		fail("the masters did not agree on the new owner: %v", err)
	}
}

// migrateKeys moves the keys of slot from from to to, in batches, until
// from holds none; the slot must be MIGRATING on from and IMPORTING on to.
//
// Keys are moved without MIGRATE's REPLACE, so a key the target already
// holds is not overwritten but refused with BUSYKEY. That cannot come from
// the clients using the slot meanwhile: the source serves every command on
// a key it holds and redirects (ASK) only commands on keys it lacks; while
// the slot is MIGRATING such a key cannot reappear on the source (a command
// on it is redirected again), and MIGRATE skips keys the source lacks. So
// the target holds a key the source still holds only when an earlier
// MIGRATE copied it but its reply was lost (the source then kept its copy,
// and kept serving it), or when something wrote to the target without
// being redirected. As redis-cli --cluster reshard does, such a key is
// moved with REPLACE if both copies are the same (DUMP), which loses
// nothing, and otherwise the move fails naming the key rather than choosing
// one copy over the other. (A retried MIGRATE, after a lost reply, finds
// either nothing left to move or such equal copies.)
func migrateKeys(ctx context.Context, slot int, from, to *Server) error {
	host, port, err := net.SplitHostPort(to.Addr)
	if err != nil {
		return err
	}
	src := from.adminClient()
	migrate := func(replace bool, keys ...string) error {
		args := []any{"MIGRATE", host, port, "", 0, migrateTimeoutMS}
		if replace {
			args = append(args, "REPLACE")
		}
		args = append(args, "KEYS")
		for _, k := range keys {
			args = append(args, k)
		}
		return src.Do(ctx, args...).Err()
	}
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, slot, migrateBatch).Result()
		if err != nil {
			return fmt.Errorf("CLUSTER GETKEYSINSLOT %d %d on %s: %w", slot, migrateBatch, from.Addr, err)
		}
		if len(keys) == 0 {
			return nil
		}
		err = migrate(false, keys...)
		if err == nil {
			continue
		}
		if !isBusyKey(err) {
			return fmt.Errorf("MIGRATE of %d keys from %s to %s: %w", len(keys), from.Addr, to.Addr, err)
		}
		// The keys before the busy one have moved, which ones is not
		// said: go through the batch one key at a time, moving all that
		// can be moved.
		var conflicts []string
		for _, k := range keys {
			err := migrate(false, k)
			if isBusyKey(err) {
				var safe bool
				if safe, err = replaceIsSafe(ctx, k, from, to); err == nil {
					if !safe {
						conflicts = append(conflicts, strconv.Quote(k))
						continue
					}
					err = migrate(true, k)
				}
			}
			if err != nil {
				return fmt.Errorf("MIGRATE of key %q from %s to %s: %w", k, from.Addr, to.Addr, err)
			}
		}
		if len(conflicts) > 0 {
			return fmt.Errorf("keys on both %s (source) and %s (target) with different values (written on the target without an ASK redirection?): %s", from.Addr, to.Addr, strings.Join(conflicts, ", "))
		}
	}
}

// isBusyKey reports whether err is MIGRATE's report of the target's BUSYKEY.
func isBusyKey(err error) bool {
	return err != nil && strings.Contains(err.Error(), "BUSYKEY")
}

// replaceIsSafe reports whether MIGRATE ... REPLACE of key from from to to
// loses nothing: when the serialized values (DUMP) on both are the same,
// or either lacks the key (by now). The slot is importing on to, hence
// ASKING there.
func replaceIsSafe(ctx context.Context, key string, from, to *Server) (bool, error) {
	a, err := from.adminClient().Dump(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("DUMP %q on %s: %w", key, from.Addr, err)
	}
	conn := to.adminClient().Conn()
	defer conn.Close()
	if err := conn.Do(ctx, "ASKING").Err(); err != nil {
		return false, fmt.Errorf("ASKING on %s: %w", to.Addr, err)
	}
	b, err := conn.Dump(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("DUMP %q on %s: %w", key, to.Addr, err)
	}
	return a == b, nil
}

// PublishSent returns the sum over live nodes of CLUSTER INFO's
// cluster_stats_messages_publish_sent: the cluster bus messages that
// classic PUBLISH broadcasts to every node (SPUBLISH's go to the shard's
// replicas only, counted as publishshard).
func (c *Cluster) PublishSent(t testing.TB) int64 {
	t.Helper()
	var sum int64
	for _, s := range c.live() {
		info, err := s.adminClient().ClusterInfo(context.Background()).Result()
		if err != nil {
			t.Fatalf("redistest: PublishSent: CLUSTER INFO on %s: %v", s.Addr, err)
		}
		// A node that has sent none does not list the field.
		if v, ok := infoField(info, "cluster_stats_messages_publish_sent"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("redistest: PublishSent: CLUSTER INFO on %s: cluster_stats_messages_publish_sent:%s: %v", s.Addr, v, err)
			}
			sum += n
		}
	}
	return sum
}

// WaitFailover waits (up to timeout) until the slot's owner is a live node other than dead,
// and every live node reports cluster_state:ok, and returns the new master.
//
// The live nodes must also agree on that owner. It fails the test when
// timeout passes first.
func (c *Cluster) WaitFailover(t testing.TB, slot int, dead *Server, timeout time.Duration) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var owner *Server
	err := poll(ctx, func() error {
		o, err := c.agreedOwner(ctx, slot)
		if err != nil {
			return err
		}
		if o == dead {
			return fmt.Errorf("%s still owns it", dead.Addr)
		}
		for _, s := range c.live() {
			info, err := s.adminClient().ClusterInfo(ctx).Result()
			if err != nil {
				return fmt.Errorf("CLUSTER INFO on %s: %w", s.Addr, err)
			}
			if st, _ := infoField(info, "cluster_state"); st != "ok" {
				return fmt.Errorf("%s reports cluster_state:%s", s.Addr, st)
			}
		}
		owner = o
		return nil
	})
	if err != nil {
		t.Fatalf("redistest: WaitFailover(%d) from %s: no failover within %v: %v", slot, dead.Addr, timeout, err)
	}
	return owner
}

// NodeID returns the node's cluster ID (CLUSTER MYID).
func (s *Server) NodeID(t testing.TB) string {
	t.Helper()
	id, err := s.adminClient().ClusterMyID(context.Background()).Result()
	if err != nil {
		t.Fatalf("redistest: CLUSTER MYID on %s: %v", s.Addr, err)
	}
	return id
}

// live returns the nodes whose process runs, masters first.
func (c *Cluster) live() []*Server {
	var l []*Server
	for _, s := range c.Nodes() {
		if s.alive() {
			l = append(l, s)
		}
	}
	return l
}

// liveMasters returns the live nodes that are masters now (ROLE), which
// after a failover need not be those in Masters.
func (c *Cluster) liveMasters(ctx context.Context) ([]*Server, error) {
	var masters []*Server
	for _, s := range c.live() {
		role, err := s.adminClient().Do(ctx, "ROLE").Slice()
		if err != nil || len(role) == 0 {
			return nil, fmt.Errorf("ROLE on %s: %v %v", s.Addr, role, err)
		}
		if role[0] == "master" {
			masters = append(masters, s)
		}
	}
	return masters, nil
}

// agreedOwner returns the node that every live node's CLUSTER SHARDS names
// as the owner of slot, if they agree and it is live.
func (c *Cluster) agreedOwner(ctx context.Context, slot int) (*Server, error) {
	live := c.live()
	if len(live) == 0 {
		return nil, errors.New("no node is running")
	}
	var owner string
	for i, s := range live {
		table, err := shardsOf(ctx, s)
		if err != nil {
			return nil, err
		}
		o := table.owner(slot)
		if i > 0 && o != owner {
			return nil, fmt.Errorf("nodes disagree on the owner: %s says %q, %s says %q", live[0].Addr, owner, s.Addr, o)
		}
		owner = o
	}
	for _, s := range live {
		if s.Addr == owner {
			return s, nil
		}
	}
	if owner == "" {
		return nil, errors.New("no node owns it")
	}
	return nil, fmt.Errorf("its owner %s is not running", owner)
}

// shardTable is one node's view of which shards serve which slots
// (CLUSTER SHARDS).
type shardTable []redis.ClusterShard

// shardsOf asks s for its shardTable.
func shardsOf(ctx context.Context, s *Server) (shardTable, error) {
	shards, err := s.adminClient().ClusterShards(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("CLUSTER SHARDS on %s: %w", s.Addr, err)
	}
	return shards, nil
}

// owner returns the address of slot's master, "" when none serves it.
func (st shardTable) owner(slot int) string {
	for _, sh := range st {
		for _, r := range sh.Slots {
			if r.Start > int64(slot) || int64(slot) > r.End {
				continue
			}
			for _, n := range sh.Nodes {
				if n.Role == "master" {
					return net.JoinHostPort(n.IP, strconv.FormatInt(n.Port, 10))
				}
			}
		}
	}
	return ""
}

// nodeEntry is one node as a node's CLUSTER NODES describes it.
type nodeEntry struct {
	addr   string   // ip:port
	master string   // the address of the master it replicates, "" for a master
	slots  []string // the slots it serves, as listed: "0-5460", "16383"
}

// nodesOf asks s for its view of the cluster (CLUSTER NODES), sorted by
// address. A node it sees as failing, or not fully joined yet, is an error.
//
// StartCluster uses CLUSTER NODES because CLUSTER SLOTS leaves out a
// replica (and CLUSTER SHARDS calls it "loading") until its replication
// offset, as gossiped, is not 0: with no writes, until the master's first
// replication PING, 10 s after the sync.
func nodesOf(ctx context.Context, s *Server) ([]nodeEntry, error) {
	text, err := s.adminClient().ClusterNodes(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("CLUSTER NODES on %s: %w", s.Addr, err)
	}
	var view []nodeEntry
	addrOf := map[string]string{} // node ID to address
	masterID := map[string]string{}
	for line := range strings.Lines(text) {
		// <id> <ip:port@cport> <flags> <master id or -> <ping-sent> <pong-recv> <config-epoch> <link-state> <slot>...
		f := strings.Fields(line)
		if len(f) < 8 {
			return nil, fmt.Errorf("CLUSTER NODES on %s: unexpected line %q", s.Addr, line)
		}
		addr, _, _ := strings.Cut(f[1], "@")
		for flag := range strings.SplitSeq(f[2], ",") {
			switch flag {
			case "fail?", "fail", "handshake", "noaddr":
				return nil, fmt.Errorf("%s sees %s as %s", s.Addr, addr, f[2])
			}
		}
		addrOf[f[0]] = addr
		if f[3] != "-" {
			masterID[addr] = f[3]
		}
		view = append(view, nodeEntry{addr: addr, slots: f[8:]})
	}
	for i, n := range view {
		if id, ok := masterID[n.addr]; ok {
			if view[i].master = addrOf[id]; view[i].master == "" {
				return nil, fmt.Errorf("%s sees %s replicate %s, which it does not know", s.Addr, n.addr, id)
			}
		}
	}
	slices.SortFunc(view, func(a, b nodeEntry) int { return strings.Compare(a.addr, b.addr) })
	return view, nil
}

// clusterUp checks that the new cluster of nodes is ready: every node
// reports cluster_state:ok and has the same view of it (CLUSTER NODES), in
// which every slot is served, by `masters` masters, each with
// replicasPerMaster replicas; every replica's link to its master is up. It
// returns that view.
func clusterUp(ctx context.Context, nodes []*Server, masters, replicasPerMaster int) ([]nodeEntry, error) {
	var first []nodeEntry
	for i, s := range nodes {
		info, err := s.adminClient().ClusterInfo(ctx).Result()
		if err != nil {
			return nil, fmt.Errorf("CLUSTER INFO on %s: %w", s.Addr, err)
		}
		if st, _ := infoField(info, "cluster_state"); st != "ok" {
			return nil, fmt.Errorf("%s reports cluster_state:%s", s.Addr, st)
		}
		view, err := nodesOf(ctx, s)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			first = view
		} else if fmt.Sprint(view) != fmt.Sprint(first) {
			return nil, fmt.Errorf("%s and %s see the cluster differently: %v vs %v", nodes[0].Addr, s.Addr, first, view)
		}
	}
	if len(first) != len(nodes) {
		return nil, fmt.Errorf("%s knows %d nodes of %d", nodes[0].Addr, len(first), len(nodes))
	}
	covered, owners, replicas := 0, 0, map[string]int{}
	for _, n := range first {
		if n.master != "" {
			replicas[n.master]++
			continue
		}
		for _, r := range n.slots {
			lo, hi, isRange := strings.Cut(r, "-")
			if !isRange {
				hi = lo
			}
			a, errA := strconv.Atoi(lo)
			b, errB := strconv.Atoi(hi)
			if errA != nil || errB != nil {
				return nil, fmt.Errorf("%s serves %q, not a slot range", n.addr, r)
			}
			covered += b - a + 1
		}
		if len(n.slots) == 0 {
			return nil, fmt.Errorf("master %s serves no slots", n.addr)
		}
		owners++
	}
	if covered != clusterSlots || owners != masters {
		return nil, fmt.Errorf("%d slots served by %d masters, want %d by %d: %v", covered, owners, clusterSlots, masters, first)
	}
	for _, n := range first {
		if n.master == "" && replicas[n.addr] != replicasPerMaster {
			return nil, fmt.Errorf("master %s has %d replicas, want %d", n.addr, replicas[n.addr], replicasPerMaster)
		}
	}
	for _, s := range nodes {
		if slices.ContainsFunc(first, func(n nodeEntry) bool { return n.addr == s.Addr && n.master == "" }) {
			continue
		}
		info, err := s.adminClient().Info(ctx, "replication").Result()
		if err != nil {
			return nil, fmt.Errorf("INFO replication on %s: %w", s.Addr, err)
		}
		if link, _ := infoField(info, "master_link_status"); link != "up" {
			return nil, fmt.Errorf("replica %s: master_link_status:%s", s.Addr, link)
		}
	}
	return first, nil
}

// arrange makes the Cluster from the nodes and their agreed view: Masters
// in the order of their slots, and Replicas ordered so that Replicas[i]
// replicates Masters[i%masters] (redis-cli may shuffle which replica goes
// to which master when all are on one host).
func arrange(view []nodeEntry, nodes []*Server, masters int) (*Cluster, error) {
	byAddr := map[string]*Server{}
	for _, s := range nodes {
		byAddr[s.Addr] = s
	}
	var ms []nodeEntry
	for _, n := range view {
		if n.master == "" {
			ms = append(ms, n)
		}
	}
	firstSlot := func(n nodeEntry) int {
		lo, _, _ := strings.Cut(n.slots[0], "-")
		i, _ := strconv.Atoi(lo)
		return i
	}
	slices.SortFunc(ms, func(a, b nodeEntry) int { return firstSlot(a) - firstSlot(b) })
	c := &Cluster{Replicas: make([]*Server, len(nodes)-masters)}
	for i, m := range ms {
		c.Masters = append(c.Masters, byAddr[m.addr])
		c.addrs = append(c.addrs, m.addr)
		k := 0
		for _, n := range view { // sorted by address
			if n.master == m.addr {
				c.Replicas[k*masters+i] = byAddr[n.addr]
				k++
			}
		}
	}
	for _, s := range c.Nodes() {
		if s == nil {
			return nil, fmt.Errorf("the cluster's nodes are not those started: %v", view)
		}
	}
	return c, nil
}

// infoField returns the value of name in INFO-style "name:value" lines.
func infoField(info, name string) (string, bool) {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), name+":"); ok {
			return v, true
		}
	}
	return "", false
}

// poll calls check every clusterPollPeriod until it returns nil or ctx is
// done; then it returns check's last error (the one before, if the last
// only says that ctx ended).
func poll(ctx context.Context, check func() error) error {
	tick := time.NewTicker(clusterPollPeriod)
	defer tick.Stop()
	var prev error
	for {
		err := check()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil && prev != nil && errors.Is(err, ctx.Err()) {
			return prev
		}
		prev = err
		select {
		case <-ctx.Done():
			return err
		case <-tick.C:
		}
	}
}

// freeClusterPort returns a free loopback port p whose cluster bus port
// p+10000 is free too and at most 65535.
func freeClusterPort() (int, error) {
	for attempt := 0; attempt < 100; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := ln.Addr().(*net.TCPAddr).Port
		if p+busPortOffset > 65535 {
			ln.Close()
			continue
		}
		bus, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+busPortOffset)))
		ln.Close()
		if err != nil {
			continue
		}
		bus.Close()
		return p, nil
	}
	return 0, fmt.Errorf("no free port p with p+%d free and at most 65535 in 100 tries", busPortOffset)
}
