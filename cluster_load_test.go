//go:build !race

// A measurement: the race detector would slow the load generator several
// times over and leave Redis idle, so the test is built without it.

package chat

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/chatrelay/chat/internal/demotest"
	"github.com/chatrelay/chat/internal/redistest"
	"github.com/chatrelay/chat/internal/wstest"
	"github.com/redis/go-redis/v9"
)

// The s3 load shape: rooms of roomMembers clients, half on each of the
// demo's two instances; one member of each room sends, keeping window
// messages of textSize bytes in flight (a new one each time its own copy
// comes back); every member reads everything. Measured for measure after
// warmUp.
const (
	s3Rooms     = 100
	roomMembers = 10
	window      = 8
	textSize    = 100
	warmUp      = 2 * time.Second
	measure     = 10 * time.Second

	// presenceRefresh is how long after an instance starts its first
	// presence refresh runs (a third of the presence TTL).
	presenceRefresh = 20 * time.Second
)

// What sharded Pub/Sub is for: a Redis Cluster whose Pub/Sub capacity
// grows with its masters. The demo (two instances, one process) runs the
// s3 load on a 3-master cluster with classic Pub/Sub (-classic-pubsub:
// every PUBLISH is copied to every node over the cluster bus) and then
// with sharded Pub/Sub (SPUBLISH: only the room's master sees its
// messages). Per node, from INFO deltas over the measured window: the
// messages it numbered and published (the publish script's EVALs), its CPU
// time, and the publish messages it received over the cluster bus. The
// tables go to the test log and, if CHAT_CLUSTER_LOAD_OUT names a file, to
// it as markdown.
//
// It checks what reliably holds on the 2-core machine it was written on
// (see the assertions at the end); Redis shares those cores with the load
// generator and the demo, so throughput is whatever is left over, and the
// figures that carry over are per message.
func TestClusterLoad(t *testing.T) {
	if os.Getenv("CHAT_CLUSTER_LOAD") != "1" {
		t.Skip("set CHAT_CLUSTER_LOAD=1 to measure Redis CPU per message on a 3-master cluster, classic against sharded Pub/Sub (about 30 s; CHAT_CLUSTER_LOAD_OUT=file.md also writes the tables): CHAT_CLUSTER_LOAD=1 go test -count=1 -run TestClusterLoad -v .")
	}
	masters := 3
	if n, err := strconv.Atoi(os.Getenv("CHAT_CLUSTER_LOAD_MASTERS")); err == nil && n >= 3 {
		masters = n // to see how classic's cost grows with the masters
	}
	raiseFileLimit(t, 4*s3Rooms*roomMembers+1000)
	c := redistest.StartCluster(t, masters, 0)
	nodes := make([]*redis.Client, len(c.Masters))
	for i, m := range c.Masters {
		nodes[i] = m.Client(t)
	}
	rooms := make([]string, s3Rooms)
	roomsOn := make([]int, len(c.Masters)) // rooms per master
	for r := range rooms {
		rooms[r] = fmt.Sprintf("s3-%d", r)
		owner := c.MasterOf(t, c.Slot(t, "chat:msg:{"+rooms[r]+"}"))
		roomsOn[slices.Index(c.Masters, owner)]++
	}
	idle := idleCPU(t, nodes)

	var results []*loadResult
	for _, mode := range []struct{ name, desc, flag string }{
		{"classic", "PUBLISH, SUBSCRIBE (-classic-pubsub)", "-classic-pubsub"},
		{"sharded", "SPUBLISH, SSUBSCRIBE", ""},
	} {
		// The same rooms in both modes, on an empty cluster.
		for i, n := range nodes {
			if err := n.FlushAll(context.Background()).Err(); err != nil {
				t.Fatalf("FLUSHALL on %s: %v", c.Masters[i].Addr, err)
			}
		}
		t.Run(mode.name, func(t *testing.T) {
			args := []string{"-redis-cluster", strings.Join(c.Addrs(), ","), "-rate-limit", "0", "-max-conns-per-ip", "0"}
			if mode.flag != "" {
				args = append(args, mode.flag)
			}
			res := runS3(t, nodes, rooms, args)
			res.mode, res.desc, res.roomsOn = mode.name, mode.desc, roomsOn
			results = append(results, res)
		})
	}
	if t.Failed() || len(results) != 2 {
		return
	}
	classic, sharded := results[0], results[1]
	report := clusterLoadReport(c, idle, classic, sharded)
	t.Log("\n" + report)
	if out := os.Getenv("CHAT_CLUSTER_LOAD_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(report), 0o644); err != nil {
			t.Errorf("CHAT_CLUSTER_LOAD_OUT: %v", err)
		}
	}

	// Classic: each message is copied to every other master; sharded:
	// none is. (Allowing for the nodes' INFO being read one after another
	// while messages flow.)
	if got, want := classic.total().busPublish, int64(masters-1)*classic.total().evals; !within(got, want, 0.02) {
		t.Errorf("classic: %d publish messages over the cluster bus for %d messages, want about %d", got, classic.total().evals, want)
	}
	if got := sharded.total().busPublish; got != 0 {
		t.Errorf("sharded: %d publish messages over the cluster bus, want 0", got)
	}
	// Sharded: each master numbers and publishes its own rooms' messages:
	// a third of them each, give or take a quarter (the rooms' names hash
	// 34, 34 and 32 of them onto the three masters).
	for i, d := range sharded.delta {
		if share := sharded.share(i); masters == 3 && (share < 0.75/3 || share > 1.25/3) {
			t.Errorf("sharded: %s handled %d messages, %.1f %% of them, want 33 %% ± 25 %%", c.Masters[i].Addr, d.evals, 100*share)
		}
	}
	// Sharded costs Redis less per message than classic. Not half, as
	// hoped: with 3 masters classic adds two cluster-bus receipts per
	// message, about 5 µs, to the 12 µs a message costs its master in
	// both modes (the script, the replies, the delivery to the two
	// instances): measured 0.70-0.73×, so only a margin is checked here.
	if ratio := sharded.cpuPerMessage() / classic.cpuPerMessage(); ratio > 0.85 {
		t.Errorf("sharded costs Redis %.1f µs per message, classic %.1f: %.2f×, want at most 0.85×", sharded.cpuPerMessage(), classic.cpuPerMessage(), ratio)
	}
}

// loadResult is one mode's measured window.
type loadResult struct {
	mode, desc string
	roomsOn    []int // rooms per master

	seconds    float64     // the window's length
	delta      []nodeStats // per master: the window's INFO deltas
	echoes     int64       // messages the senders got back: sent and relayed
	deliveries int64       // messages read by all clients
	demoCPU    float64     // the demo's CPU seconds (both instances)
	driverCPU  float64     // this process's CPU seconds (the load generator)
}

// total sums the per-node deltas.
func (r *loadResult) total() nodeStats {
	var s nodeStats
	for _, d := range r.delta {
		s.cpu += d.cpu
		s.evals += d.evals
		s.busPublish += d.busPublish
	}
	return s
}

// share is node i's part of the messages numbered in the window.
func (r *loadResult) share(i int) float64 {
	return float64(r.delta[i].evals) / float64(r.total().evals)
}

// cpuPerMessage is the whole cluster's Redis CPU per message, in µs.
func (r *loadResult) cpuPerMessage() float64 {
	tot := r.total()
	return 1e6 * tot.cpu / float64(tot.evals)
}

// runS3 starts the demo with args (two instances) and runs the s3 shape on
// it, in rooms; the demo and the clients stop when t ends.
func runS3(t *testing.T, nodes []*redis.Client, rooms []string, args []string) *loadResult {
	addrs := []string{demotest.FreeAddr(t), demotest.FreeAddr(t)}
	started := time.Now()
	demo := demotest.Start(t, "cluster-load", addrs, args...)

	lrs := make([]*loadRoom, len(rooms))
	for r, name := range rooms {
		lrs[r] = &loadRoom{name: name, frame: fmt.Sprintf(`{"type":"message","room":%q,"text":%q}`, name, strings.Repeat("x", textSize))}
	}
	connectRooms(t, lrs, addrs)

	var deliveries, echoes atomic.Int64
	stop := make(chan struct{})
	done := make(chan error, len(rooms)*roomMembers)
	for _, lr := range lrs {
		for k, m := range lr.members {
			go func() { done <- lr.read(k, m, stop, &deliveries, &echoes) }()
		}
	}
	failed := func(err error) {
		close(stop)
		t.Fatalf("load: %v", err)
	}
	select {
	case err := <-done:
		failed(err) // a reader ends early only on an error
	case <-time.After(warmUp):
	}

	before := snapshot(t, nodes, demo)
	d0, e0 := deliveries.Load(), echoes.Load()
	select {
	case err := <-done:
		failed(err)
	case <-time.After(measure):
	}
	after := snapshot(t, nodes, demo)
	d1, e1 := deliveries.Load(), echoes.Load()
	if took := after.at.Sub(started); took >= presenceRefresh {
		// Each instance refreshes its rooms' presence with an EVAL per
		// room every 20 s: those would be counted as messages.
		t.Errorf("the measured window ended %v after the demo started, not within %v: the presence refresh's EVALs may be counted as messages", took.Round(time.Millisecond), presenceRefresh)
	}
	close(stop)
	deadline := time.After(time.Minute)
	for range len(rooms) * roomMembers {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("load: %v", err)
			}
		case <-deadline:
			t.Fatal("load: the readers did not get every message within a minute of the senders' last")
		}
	}

	res := &loadResult{
		seconds:    after.at.Sub(before.at).Seconds(),
		echoes:     e1 - e0,
		deliveries: d1 - d0,
		demoCPU:    after.demoCPU - before.demoCPU,
		driverCPU:  after.selfCPU - before.selfCPU,
	}
	for i := range nodes {
		res.delta = append(res.delta, after.nodes[i].minus(before.nodes[i]))
	}
	return res
}

// loadRoom is one room of the s3 shape.
type loadRoom struct {
	name    string
	frame   string         // the message frame its sender sends
	members []*wstest.Conn // members[0] sends
	sent    atomic.Int64   // messages its sender sent, the end marker aside
}

// endText is the text of the message a sender sends once it has stopped
// and every message it sent came back: the room's last, which ends its
// members' reading.
const endText = "end"

// connectRooms connects every room's members, alternately to the two
// instances (so the senders are split between them too), and waits until
// each has joined.
func connectRooms(t *testing.T, lrs []*loadRoom, addrs []string) {
	var urls []string
	for r, lr := range lrs {
		for k := range roomMembers {
			urls = append(urls, fmt.Sprintf("ws://%s/chat?room=%s&user=u%d-%d", addrs[(r+k)%2], lr.name, r, k))
		}
	}
	clients := dialJoined(t, urls)
	for r, lr := range lrs {
		lr.members = clients[r*roomMembers : (r+1)*roomMembers]
	}
}

// read reads member k's frames, c, until the room's end marker, counting
// them in deliveries; every message must be the room's. Member 0 is the
// sender: it sends the first window of messages, then one more for each
// of its own that comes back (counted in echoes) until stop is closed, and
// then, once every one it sent has come back, the end marker. Each member
// must get every message sent.
func (lr *loadRoom) read(k int, c *wstest.Conn, stop <-chan struct{}, deliveries, echoes *atomic.Int64) error {
	sender := k == 0
	send := func(frame string) error {
		if err := c.SendText(frame); err != nil {
			return fmt.Errorf("room %s: send: %w", lr.name, err)
		}
		return nil
	}
	if sender {
		for range window {
			lr.sent.Add(1)
			if err := send(lr.frame); err != nil {
				return err
			}
		}
	}
	msgPrefix := []byte(`{"type":"message","room":` + strconv.Quote(lr.name) + `,`)
	end := []byte(`"text":"` + endText + `"`)
	var got int64
	for {
		_, p, err := c.ReadFrame(30 * time.Second)
		switch {
		case err != nil:
			return fmt.Errorf("room %s, member %d, after %d messages: %w", lr.name, k, got, err)
		case !bytes.HasPrefix(p, msgPrefix):
			return fmt.Errorf("room %s, member %d: unexpected frame %s", lr.name, k, p)
		case bytes.Contains(p, end):
			if sent := lr.sent.Load(); got != sent {
				return fmt.Errorf("room %s, member %d: %d messages before the end, %d sent", lr.name, k, got, sent)
			}
			return nil
		}
		got++
		deliveries.Add(1)
		if !sender {
			continue
		}
		echoes.Add(1)
		select {
		case <-stop:
			if got == lr.sent.Load() {
				if err := send(fmt.Sprintf(`{"type":"message","room":%q,"text":%q}`, lr.name, endText)); err != nil {
					return err
				}
			}
		default:
			lr.sent.Add(1)
			if err := send(lr.frame); err != nil {
				return err
			}
		}
	}
}

// nodeStats are one Redis node's counters, from INFO and CLUSTER INFO.
type nodeStats struct {
	cpu        float64 // used_cpu_sys + used_cpu_user, seconds
	evals      int64   // commandstats: EVAL calls
	busPublish int64   // cluster_stats_messages_publish_received
}

func (s nodeStats) minus(o nodeStats) nodeStats {
	return nodeStats{cpu: s.cpu - o.cpu, evals: s.evals - o.evals, busPublish: s.busPublish - o.busPublish}
}

// readNodeStats reads rdb's nodeStats.
func readNodeStats(rdb *redis.Client) (nodeStats, error) {
	ctx := context.Background()
	info, err := rdb.Info(ctx, "cpu", "commandstats").Result()
	if err != nil {
		return nodeStats{}, fmt.Errorf("INFO on %s: %w", rdb.Options().Addr, err)
	}
	cluster, err := rdb.ClusterInfo(ctx).Result()
	if err != nil {
		return nodeStats{}, fmt.Errorf("CLUSTER INFO on %s: %w", rdb.Options().Addr, err)
	}
	f := infoFields(info + cluster)
	var s nodeStats
	sys, err1 := strconv.ParseFloat(f["used_cpu_sys"], 64)
	user, err2 := strconv.ParseFloat(f["used_cpu_user"], 64)
	if err1 != nil || err2 != nil {
		return s, fmt.Errorf("INFO cpu on %s: used_cpu_sys %q, used_cpu_user %q", rdb.Options().Addr, f["used_cpu_sys"], f["used_cpu_user"])
	}
	s.cpu = sys + user
	// cmdstat_eval:calls=N,usec=…; absent until the first EVAL. (Its
	// usec is wall-clock time, which on a busy machine includes time the
	// node was not running: CPU time comes from INFO cpu instead.)
	if v, ok := f["cmdstat_eval"]; ok {
		calls, _, _ := strings.Cut(strings.TrimPrefix(v, "calls="), ",")
		if s.evals, err = strconv.ParseInt(calls, 10, 64); err != nil {
			return s, fmt.Errorf("INFO commandstats on %s: cmdstat_eval:%s: %w", rdb.Options().Addr, v, err)
		}
	}
	// Absent until the node has received one.
	if v, ok := f["cluster_stats_messages_publish_received"]; ok {
		if s.busPublish, err = strconv.ParseInt(v, 10, 64); err != nil {
			return s, fmt.Errorf("CLUSTER INFO on %s: cluster_stats_messages_publish_received:%s: %w", rdb.Options().Addr, v, err)
		}
	}
	return s, nil
}

// infoFields splits INFO-style "name:value" lines.
func infoFields(info string) map[string]string {
	f := make(map[string]string)
	for line := range strings.Lines(info) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			f[k] = v
		}
	}
	return f
}

// loadSnapshot is the counters at one moment of a run.
type loadSnapshot struct {
	at      time.Time
	nodes   []nodeStats
	demoCPU float64 // the demo process's CPU seconds
	selfCPU float64 // this process's CPU seconds
}

// snapshot reads the counters of every node, the demo's and this
// process's CPU time.
func snapshot(t *testing.T, nodes []*redis.Client, demo *demotest.Demo) loadSnapshot {
	s := loadSnapshot{at: time.Now(), demoCPU: processCPU(t, demo.PID())}
	var ru syscall.Rusage
	must(t, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	s.selfCPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	for _, n := range nodes {
		ns, err := readNodeStats(n)
		must(t, err)
		s.nodes = append(s.nodes, ns)
	}
	return s
}

// processCPU is the CPU time, user and system, of process pid so far, in
// seconds (from /proc/<pid>/stat, in clock ticks of 1/100 s: Linux's
// USER_HZ).
func processCPU(t *testing.T, pid int) float64 {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	must(t, err)
	// The fields after the command name, which is in parentheses and may
	// hold spaces: state is the 3rd field, utime the 14th, stime the 15th.
	rest := string(stat[bytes.LastIndexByte(stat, ')')+2:])
	f := strings.Fields(rest)
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: utime %q, stime %q", pid, f[11], f[12])
	}
	return (utime + stime) / 100
}

// idleCPU measures the Redis nodes' CPU use with nothing connected, in
// seconds per second per node: their housekeeping (the 10 Hz cron, the
// cluster bus's pings), which the loaded figures include.
func idleCPU(t *testing.T, nodes []*redis.Client) []float64 {
	const d = 2 * time.Second
	before := make([]nodeStats, len(nodes))
	for i, n := range nodes {
		s, err := readNodeStats(n)
		must(t, err)
		before[i] = s
	}
	start := time.Now()
	<-time.After(d)
	secs := time.Since(start).Seconds()
	idle := make([]float64, len(nodes))
	for i, n := range nodes {
		s, err := readNodeStats(n)
		must(t, err)
		idle[i] = (s.cpu - before[i].cpu) / secs
	}
	return idle
}

// within reports whether got is within frac of want.
func within(got, want int64, frac float64) bool {
	return float64(got) >= (1-frac)*float64(want) && float64(got) <= (1+frac)*float64(want)
}

// clusterLoadReport formats the results as markdown: a table per mode, the
// comparison and what the sharded figures say about capacity.
func clusterLoadReport(c *redistest.Cluster, idle []float64, modes ...*loadResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Redis Cluster, %d masters: the s3 load (%d rooms × %d clients on 2 instances, %d senders, %d in flight each, %d-byte texts), %v measured after %v\n",
		len(c.Masters), s3Rooms, roomMembers, s3Rooms, window, textSize, measure, warmUp)
	b.WriteString("\nMessages are the publish script's EVALs, which number and publish them on the room's master. A node's CPU (INFO used_cpu_sys + used_cpu_user) is divided by the messages it handled, and by all the cluster's messages (that column adds up to the total); with classic Pub/Sub a node also receives the other masters' messages over the cluster bus.\n")
	for _, r := range modes {
		tot := r.total()
		fmt.Fprintf(&b, "\n### %s: %s\n\n", r.mode, r.desc)
		fmt.Fprintf(&b, "%d messages (%.0f/s, driver count %d), %.0f deliveries/s; CPU cores used: Redis %.2f, demo %.2f, load generator %.2f\n\n",
			tot.evals, float64(tot.evals)/r.seconds, r.echoes, float64(r.deliveries)/r.seconds,
			tot.cpu/r.seconds, r.demoCPU/r.seconds, r.driverCPU/r.seconds)
		b.WriteString("| node | rooms | messages (EVALs) | share | CPU s | CPU µs per message it handled | CPU µs per cluster message | cluster-bus publishes received |\n")
		b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		lo, hi := 1.0, 0.0
		for i, d := range r.delta {
			share := r.share(i)
			lo, hi = min(lo, share), max(hi, share)
			fmt.Fprintf(&b, "| %s | %d | %d | %.1f %% | %.2f | %.1f | %.1f | %d |\n",
				c.Masters[i].Addr, r.roomsOn[i], d.evals, 100*share, d.cpu,
				1e6*d.cpu/float64(max(d.evals, 1)), 1e6*d.cpu/float64(tot.evals), d.busPublish)
		}
		fmt.Fprintf(&b, "| all | %d | %d | 100 %% | %.2f | | **%.1f** | %d |\n", s3Rooms, tot.evals, tot.cpu, r.cpuPerMessage(), tot.busPublish)
		fmt.Fprintf(&b, "\nShare of messages per node: min %.1f %%, max %.1f %%.\n", 100*lo, 100*hi)
	}
	if len(modes) == 2 {
		classic, sharded := modes[0], modes[1]
		fmt.Fprintf(&b, "\n### Sharded against classic\n\n")
		fmt.Fprintf(&b, "Total Redis CPU per message: classic %.1f µs, sharded %.1f µs: **%.2f×**.\n",
			classic.cpuPerMessage(), sharded.cpuPerMessage(), sharded.cpuPerMessage()/classic.cpuPerMessage())
		fmt.Fprintf(&b, "Messages/s: classic %.0f, sharded %.0f (the machine's 2 cores are shared with the demo and the load generator).\n",
			float64(classic.total().evals)/classic.seconds, float64(sharded.total().evals)/sharded.seconds)
		// What classic adds is the cluster bus: every other master receives
		// each message. Spread over those receipts, it estimates what
		// classic would cost with more masters, each adding one receipt
		// per message.
		perMsg := float64(classic.total().busPublish) / float64(classic.total().evals)
		bus := (classic.cpuPerMessage() - sharded.cpuPerMessage()) / perMsg
		ratioAt := func(n int) float64 {
			return sharded.cpuPerMessage() / (sharded.cpuPerMessage() + float64(n-1)*bus)
		}
		fmt.Fprintf(&b, "Classic's extra, %.1f µs per message, is %.1f cluster-bus publishes received per message at %.1f µs each; if each further master adds one such receipt, sharded/classic would be ≈ %.2f× with 6 masters and ≈ %.2f× with 10 (an estimate, not measured).\n",
			classic.cpuPerMessage()-sharded.cpuPerMessage(), perMsg, bus, ratioAt(6), ratioAt(10))
		// A node handles its own rooms' messages at the sharded cost per
		// message; at one core it saturates.
		perNode := 0.0
		for _, d := range sharded.delta {
			perNode = max(perNode, 1e6*d.cpu/float64(max(d.evals, 1)))
		}
		fmt.Fprintf(&b, "Capacity: a node at one core carries ≈ 1e6 / %.1f µs ≈ %.0f messages/s (the costliest node's CPU per message it handled, sharded), so a cluster of N such nodes would carry ≈ N × %.0f messages/s (N = 3: %.0f; N = 10: %.0f), given rooms spread evenly over them.\n",
			perNode, 1e6/perNode, 1e6/perNode, 3*1e6/perNode, 10*1e6/perNode)
	}
	idleMs := make([]string, len(idle))
	for i, v := range idle {
		idleMs[i] = fmt.Sprintf("%.1f", 1e3*v)
	}
	fmt.Fprintf(&b, "\nIdle CPU per node before the runs (included above): %s ms/s.\n", strings.Join(idleMs, ", "))
	return b.String()
}
