// Command _example is the chat demo: one or more chat instances, each an
// HTTP server with its own chat.Handler and its own pair of Redis clients,
// relaying through one Redis or one Redis Cluster.
//
//	go run ./_example                                  # embedded Redis, instances on :8080 and :8081
//	go run ./_example -redis redis://127.0.0.1:6379 -addr :8080   # one instance against a real Redis
//	go run ./_example -redis-cluster 127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002 -addr :8080   # a Redis 7 Cluster, sharded Pub/Sub
//
// Routes: / (the page), /chat (the WebSocket), /chat.js (the browser client),
// /healthz (200 when Redis answers a PING within 1 s), /info (the instance
// ID as JSON) and /metrics (the instance's counters for Prometheus, see
// metrics.go).
package main

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/chatrelay/chat"
	"github.com/redis/go-redis/v9"
	"golang.org/x/net/netutil"
)

//go:embed index.html app.js style.css
var assets embed.FS

var page = template.Must(template.ParseFS(assets, "index.html"))

// csp keeps the page to its own scripts and styles: user text is only ever
// rendered with textContent, and this backs that up.
const csp = "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

func main() {
	os.Exit(cli(context.Background(), os.Args[1:], os.Stderr, nil))
}

// cli runs the demo with the command-line arguments args until ctx ends,
// SIGINT or SIGTERM, and returns its exit status: 2 for a usage error, 1
// when it cannot start or a server fails. Logs and errors go to stderr.
// listening, if not nil, is given the instances' listen addresses once
// they all listen (tests use it with -addr 127.0.0.1:0).
func cli(ctx context.Context, args []string, stderr io.Writer, listening func(addrs []string)) int {
	fs := flag.NewFlagSet(os.Args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	addrs := fs.String("addr", "", "comma-separated listen addresses, one chat instance each (default\n\"127.0.0.1:8080,127.0.0.1:8081\" with the embedded Redis, \"127.0.0.1:8080\"\notherwise; \":8080\" listens on every interface)")
	var rc redisConfig
	fs.StringVar(&rc.url, "redis", "", "Redis URL such as redis://127.0.0.1:6379/0 (default $REDIS_URL;\nneither set nor -redis-cluster: an embedded miniredis)")
	cluster := fs.String("redis-cluster", "", "comma-separated host:port of Redis Cluster nodes (a few are enough,\nthe others are discovered): each instance uses two cluster clients and\nRedis 7 sharded Pub/Sub, every room relayed by its slot's master alone;\nnot with -redis ($REDIS_URL is then ignored)")
	fs.BoolVar(&rc.classic, "classic-pubsub", false, "with -redis-cluster: classic Pub/Sub (PUBLISH, SUBSCRIBE), which the cluster\ncopies to every node, instead of sharded, for Redis 6 clusters;\nwithout -redis-cluster it changes nothing (one Redis always uses classic Pub/Sub)")
	var set settings
	fs.Float64Var(&set.rate, "rate-limit", 20, "messages per second per connection, in bursts of twice that; 0 = no limit")
	fs.IntVar(&set.maxConns, "max-conns", 10000, "WebSocket connections per instance (over it: HTTP 503)")
	fs.IntVar(&set.perIP, "max-conns-per-ip", 256, "connections open at once from one IP address, per instance; 0 = no limit\n(behind a reverse proxy, limit there instead)")
	fs.IntVar(&set.history, "history", 100, "messages Redis keeps per room, for the page's history and for recovery\nafter a reconnect; 0 = off")
	fs.BoolVar(&set.privateRooms, "private-rooms", false, "rooms named staff-* admit only users whose name starts with admin\n(the others get forbidden; chat.WithAuthorize at work)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2 // the flag package has said what is wrong, and printed the usage
	}
	usage := func(msg string) int {
		fmt.Fprintln(stderr, msg)
		return 2
	}
	if set.history < 0 {
		return usage("-history: a count of messages, 0 or more")
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if given["redis-cluster"] {
		if given["redis"] {
			return usage("-redis and -redis-cluster: give one of them, not both")
		}
		var err error
		if rc.cluster, err = clusterAddrs(*cluster); err != nil {
			return usage("-redis-cluster: " + err.Error())
		}
	} else if rc.url == "" {
		rc.url = os.Getenv("REDIS_URL")
	}
	return run(ctx, *addrs, rc, set, stderr, listening)
}

// clusterAddrs splits -redis-cluster's list into host:port addresses.
func clusterAddrs(list string) ([]string, error) {
	var addrs []string
	for a := range strings.SplitSeq(list, ",") {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("%q is not host:port: %w", a, err)
		}
		addrs = append(addrs, a)
	}
	if len(addrs) == 0 {
		return nil, errors.New("no address given (want host:port,host:port,...)")
	}
	return addrs, nil
}

// redisConfig is the Redis the instances relay through, from -redis,
// -redis-cluster and -classic-pubsub.
type redisConfig struct {
	url     string   // a redis:// URL; "" without cluster: the embedded miniredis
	cluster []string // seed addresses of a Redis Cluster; nil: not a cluster
	classic bool     // classic Pub/Sub on the cluster (chat.WithClassicPubSub)
}

// backend makes the Redis clients of the instances, each its own pair:
// either plain clients of one Redis or cluster clients.
type backend struct {
	desc    string                // which Redis, for the log and errors: a URL, "cluster host:port,…", "embedded miniredis at …"
	opt     *redis.Options        // one Redis; nil for a cluster
	cluster *redis.ClusterOptions // a Redis Cluster; nil for one Redis
	classic bool                  // classic Pub/Sub on the cluster
}

// client returns a new client of the backend.
func (b *backend) client() redis.UniversalClient {
	if b.cluster != nil {
		return redis.NewClusterClient(b.cluster)
	}
	return redis.NewClient(b.opt)
}

// pubsub names the Pub/Sub the instances use: sharded (SPUBLISH,
// SSUBSCRIBE) on a cluster unless -classic-pubsub, classic otherwise. It is
// the choice chat.New makes for such clients.
func (b *backend) pubsub() string {
	if b.cluster != nil && !b.classic {
		return "sharded"
	}
	return "classic"
}

// ping checks that Redis answers, so that a wrong -redis or -redis-cluster
// fails at start with a clear message rather than serving a chat that
// cannot relay. On a cluster every master must answer (ForEachMaster,
// after reading the slot map from a seed): each serves its share of the
// rooms, so one that is unreachable would leave those rooms silent, where
// a single PING would have reached just one node.
func (b *backend) ping() error {
	c := b.client()
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	cc, ok := c.(*redis.ClusterClient)
	if !ok {
		return c.Ping(ctx).Err()
	}
	return cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		if err := m.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("master %s: %w", m.Options().Addr, err)
		}
		return nil
	})
}

// settings are the demo's limits, from its flags.
type settings struct {
	rate     float64 // messages per second per connection; 0: none
	maxConns int     // WebSocket connections per instance
	perIP    int     // connections at once from one IP; 0: none
	history  int     // messages kept per room (chat.WithHistory); 0: none

	privateRooms bool // staff-* rooms for admin* users only (chat.WithAuthorize)
}

// staffOnly is the -private-rooms policy: rooms whose name starts with
// "staff-" admit only users whose name starts with "admin".
func staffOnly(_ context.Context, user, room string) error {
	if strings.HasPrefix(room, "staff-") && !strings.HasPrefix(user, "admin") {
		return errors.New("staff rooms are for admins only")
	}
	return nil
}

// instance is one chat server: an address, a Handler and its Redis clients
// (plain or cluster clients, see backend).
type instance struct {
	h        *chat.Handler
	pub, sub redis.UniversalClient
	log      *slog.Logger
	ln       net.Listener
	srv      *http.Server
	url      string
}

// run serves the demo (see cli) until ctx ends, SIGINT or SIGTERM, or a
// server fails, and returns the exit status.
func run(ctx context.Context, addrList string, rc redisConfig, set settings, stderr io.Writer, listening func(addrs []string)) int {
	base := slog.New(slog.NewTextHandler(stderr, nil))
	be, err := newBackend(rc)
	if err != nil {
		fmt.Fprintln(stderr, "-redis:", err)
		return 2
	}
	if be.cluster == nil && rc.url == "" {
		mr, err := miniredis.Run()
		if err != nil {
			fmt.Fprintln(stderr, "embedded redis:", err)
			return 1
		}
		defer mr.Close()
		mr.ClockTTL(true) // room keys expire in real time, as with a real Redis
		be.opt = &redis.Options{Addr: mr.Addr()}
		be.desc = "embedded miniredis at " + mr.Addr()
		if addrList == "" {
			addrList = defaultAddrs(true)
		}
	} else if addrList == "" {
		addrList = defaultAddrs(false)
	}
	if err := be.ping(); err != nil {
		fmt.Fprintf(stderr, "cannot reach Redis (%s): %v\n", be.desc, err)
		return 1
	}

	var insts []*instance
	defer func() {
		for _, in := range insts {
			in.pub.Close()
			in.sub.Close()
		}
	}()
	var ids []string
	for _, addr := range strings.Split(addrList, ",") {
		in, err := newInstance(strings.TrimSpace(addr), be, set, base)
		if in != nil {
			insts = append(insts, in)
		}
		if err != nil {
			in.log.Error("cannot listen", "addr", addr, "err", err)
			return 1
		}
		ids = append(ids, in.h.InstanceID())
		in.log.Info("chat instance listening", "url", in.url, "redis", be.desc, "pubsub", be.pubsub(), "rate_limit", set.rate, "max_conns", set.maxConns, "max_conns_per_ip", set.perIP, "history", set.history)
	}
	// go-redis logs through one global logger (reconnects, dial failures); it
	// cannot tell which instance a line is about, so it names them all.
	redis.SetLogger(redisLogger{base.With("instance", strings.Join(ids, ","), "component", "go-redis")})

	if len(insts) == 1 {
		fmt.Printf("open %s (start more processes with another -addr and the same Redis to chat across them)\n", insts[0].url)
	} else {
		urls := make([]string, len(insts))
		for i, in := range insts {
			urls[i] = in.url
		}
		fmt.Printf("open %s in %d tabs\n", strings.Join(urls, " and "), len(insts))
	}

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	serveErr := make(chan error, len(insts))
	for _, in := range insts {
		go func() {
			if err := in.srv.Serve(in.ln); !errors.Is(err, http.ErrServerClosed) {
				in.log.Error("serve", "err", err)
				serveErr <- err
			}
		}()
	}
	if listening != nil {
		addrs := make([]string, len(insts))
		for i, in := range insts {
			addrs[i] = in.ln.Addr().String()
		}
		listening(addrs)
	}
	code := 0
	select {
	case <-ctx.Done():
	case <-serveErr:
		code = 1
	}
	stop() // a second Ctrl-C kills the process at once

	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, in := range insts {
		wg.Go(func() { in.shutdown(sctx) })
	}
	wg.Wait()
	return code
}

// newBackend makes the backend that rc describes; the embedded miniredis
// (no URL, no cluster) is left for run to start. The error is a URL that
// does not parse.
func newBackend(rc redisConfig) (*backend, error) {
	switch {
	case rc.cluster != nil:
		return &backend{
			desc:    "cluster " + strings.Join(rc.cluster, ","),
			cluster: &redis.ClusterOptions{Addrs: rc.cluster},
			classic: rc.classic,
		}, nil
	case rc.url != "":
		opt, err := redis.ParseURL(rc.url)
		if err != nil {
			return nil, err
		}
		return &backend{desc: rc.url, opt: opt}, nil
	}
	return &backend{}, nil
}

// newInstance makes an instance listening on addr, with its own pair of
// clients of be; it does not serve yet. On a listen error it returns the
// instance too, whose clients the caller closes.
func newInstance(addr string, be *backend, set settings, base *slog.Logger) (*instance, error) {
	in := &instance{pub: be.client(), sub: be.client()}
	burst := 0
	if set.rate > 0 {
		burst = max(1, int(math.Ceil(2*set.rate)))
	}
	opts := []chat.Option{chat.WithLogger(base), chat.WithRateLimit(set.rate, burst), chat.WithMaxConnections(set.maxConns), chat.WithHistory(set.history)}
	if set.privateRooms {
		opts = append(opts, chat.WithAuthorize(staffOnly))
	}
	if be.classic {
		opts = append(opts, chat.WithClassicPubSub())
	}
	in.h = chat.New(in.pub, in.sub, opts...)
	in.log = base.With("instance", in.h.InstanceID())

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", in.index)
	mux.Handle("GET /app.js", http.FileServerFS(assets))
	mux.Handle("GET /style.css", http.FileServerFS(assets))
	mux.Handle("GET /chat.js", chat.ClientScript())
	mux.Handle("/chat", in.h)
	mux.HandleFunc("GET /healthz", in.healthz)
	mux.HandleFunc("GET /info", in.info)
	mux.Handle("GET /metrics", metricsHandler(in.h))
	// Bounds for every connection before it becomes a WebSocket (net/http
	// clears the deadlines at the hijack; the Handler keeps its own): small
	// headers, read in time, and no idle keep-alive kept for long.
	in.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(in.log.Handler(), slog.LevelWarn),
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return in, err
	}
	// Every connection counts, WebSockets and plain requests alike: a little
	// over the WebSocket cap, so that a full instance still answers 503,
	// /healthz and /metrics.
	in.ln = netutil.LimitListener(limitPerIP(ln, set.perIP), set.maxConns+256)
	in.url = "http://" + browsable(ln.Addr())
	return in, nil
}

// defaultAddrs is where the demo listens without -addr: on loopback only,
// two instances with the embedded Redis, one with a real one. -addr :8080
// opens it to the network.
func defaultAddrs(embedded bool) string {
	if embedded {
		return "127.0.0.1:8080,127.0.0.1:8081"
	}
	return "127.0.0.1:8080"
}

// browsable turns a listen address into host:port for a URL: an unspecified
// or loopback host (":8080", "0.0.0.0:8080", "127.0.0.1:8080") becomes
// localhost.
func browsable(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && (ip.IsUnspecified() || ip.IsLoopback())) {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}

func (in *instance) index(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", csp)
	w.Header().Set("Cache-Control", "no-cache")
	if err := page.Execute(w, struct{ Instance string }{in.h.InstanceID()}); err != nil {
		in.log.Warn("render page", "err", err)
	}
}

func (in *instance) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	w.Header().Set("Cache-Control", "no-store")
	if err := in.pub.Ping(ctx).Err(); err != nil {
		http.Error(w, "redis unavailable", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (in *instance) info(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(map[string]string{"instance": in.h.InstanceID()})
}

// shutdown stops accepting connections, then closes every WebSocket with
// 1001 (the browser client reconnects, to another instance if there is a
// load balancer) and waits for the Handler's goroutines.
func (in *instance) shutdown(ctx context.Context) {
	in.log.Info("stopping: no new connections, closing WebSockets with 1001")
	if err := in.srv.Shutdown(ctx); err != nil {
		in.log.Warn("http shutdown", "err", err)
	}
	if err := in.h.Shutdown(ctx); err != nil {
		in.log.Warn("chat shutdown", "err", err)
	}
}

type redisLogger struct{ l *slog.Logger }

func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	r.l.WarnContext(ctx, strings.TrimSpace(fmt.Sprintf(format, v...)))
}
