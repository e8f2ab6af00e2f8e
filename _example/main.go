// Command _example is the chat demo: one or more chat instances, each an
// HTTP server with its own chat.Handler and its own pair of Redis clients,
// relaying through one Redis.
//
//	go run ./_example                                  # embedded Redis, instances on :8080 and :8081
//	go run ./_example -redis redis://127.0.0.1:6379 -addr :8080   # one instance against a real Redis
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
	addrs := flag.String("addr", "", "comma-separated listen addresses, one chat instance each (default\n\"127.0.0.1:8080,127.0.0.1:8081\" with the embedded Redis, \"127.0.0.1:8080\"\notherwise; \":8080\" listens on every interface)")
	redisURL := flag.String("redis", "", "Redis URL such as redis://127.0.0.1:6379/0 (default $REDIS_URL;\nneither set: an embedded miniredis)")
	var set settings
	flag.Float64Var(&set.rate, "rate-limit", 20, "messages per second per connection, in bursts of twice that; 0 = no limit")
	flag.IntVar(&set.maxConns, "max-conns", 10000, "WebSocket connections per instance (over it: HTTP 503)")
	flag.IntVar(&set.perIP, "max-conns-per-ip", 256, "connections open at once from one IP address, per instance; 0 = no limit\n(behind a reverse proxy, limit there instead)")
	flag.IntVar(&set.history, "history", 100, "messages Redis keeps per room, for the page's history and for recovery\nafter a reconnect; 0 = off")
	flag.BoolVar(&set.privateRooms, "private-rooms", false, "rooms named staff-* admit only users whose name starts with admin\n(the others get forbidden; chat.WithAuthorize at work)")
	flag.Parse()
	if set.history < 0 {
		fmt.Fprintln(os.Stderr, "-history: a count of messages, 0 or more")
		os.Exit(2)
	}
	if *redisURL == "" {
		*redisURL = os.Getenv("REDIS_URL")
	}
	os.Exit(run(*addrs, *redisURL, set))
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

// instance is one chat server: an address, a Handler and its Redis clients.
type instance struct {
	h        *chat.Handler
	pub, sub *redis.Client
	log      *slog.Logger
	ln       net.Listener
	srv      *http.Server
	url      string
}

func run(addrList, redisURL string, set settings) int {
	base := slog.New(slog.NewTextHandler(os.Stderr, nil))
	redisDesc := redisURL
	if redisURL == "" {
		mr, err := miniredis.Run()
		if err != nil {
			fmt.Fprintln(os.Stderr, "embedded redis:", err)
			return 1
		}
		defer mr.Close()
		mr.ClockTTL(true) // room keys expire in real time, as with a real Redis
		redisURL = "redis://" + mr.Addr()
		redisDesc = "embedded miniredis at " + mr.Addr()
		if addrList == "" {
			addrList = defaultAddrs(true)
		}
	} else if addrList == "" {
		addrList = defaultAddrs(false)
	}
	opt, err := redis.ParseURL(redisURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "-redis:", err)
		return 2
	}
	if err := ping(opt); err != nil {
		fmt.Fprintf(os.Stderr, "cannot reach Redis at %s: %v\n", redisDesc, err)
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
		in, err := newInstance(strings.TrimSpace(addr), opt, set, base)
		if in != nil {
			insts = append(insts, in)
		}
		if err != nil {
			in.log.Error("cannot listen", "addr", addr, "err", err)
			return 1
		}
		ids = append(ids, in.h.InstanceID())
		in.log.Info("chat instance listening", "url", in.url, "redis", redisDesc, "rate_limit", set.rate, "max_conns", set.maxConns, "max_conns_per_ip", set.perIP, "history", set.history)
	}
	// go-redis logs through one global logger (reconnects, dial failures); it
	// cannot tell which instance a line is about, so it names them all.
	redis.SetLogger(redisLogger{base.With("instance", strings.Join(ids, ","), "component", "go-redis")})

	if len(insts) == 1 {
		fmt.Printf("open %s (start more processes with another -addr and the same -redis to chat across them)\n", insts[0].url)
	} else {
		urls := make([]string, len(insts))
		for i, in := range insts {
			urls[i] = in.url
		}
		fmt.Printf("open %s in %d tabs\n", strings.Join(urls, " and "), len(insts))
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
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

func newInstance(addr string, opt *redis.Options, set settings, base *slog.Logger) (*instance, error) {
	in := &instance{pub: redis.NewClient(opt), sub: redis.NewClient(opt)}
	burst := 0
	if set.rate > 0 {
		burst = max(1, int(math.Ceil(2*set.rate)))
	}
	opts := []chat.Option{chat.WithLogger(base), chat.WithRateLimit(set.rate, burst), chat.WithMaxConnections(set.maxConns), chat.WithHistory(set.history)}
	if set.privateRooms {
		opts = append(opts, chat.WithAuthorize(staffOnly))
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

// ping checks that Redis answers, so that a wrong -redis fails at start
// with a clear message rather than serving a chat that cannot relay.
func ping(opt *redis.Options) error {
	c := redis.NewClient(opt)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return c.Ping(ctx).Err()
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
