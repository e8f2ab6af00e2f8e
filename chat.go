// Package chat turns any net/http application into a WebSocket chat that
// spans many server instances.
//
// Each instance holds its own WebSocket connections. Instances never talk to
// each other: every message goes from its sender's instance to Redis
// (PUBLISH), and every instance subscribed to the room relays what Redis
// delivers to its local members, the sender included. Because nobody sees a
// message before Redis has ordered it, all members of a room, on every
// instance, see the room's messages in the same order.
//
// Mount a Handler like any other http.Handler:
//
//	pub := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
//	sub := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
//	h := chat.New(pub, sub, chat.WithLogger(logger))
//	mux.Handle("/chat", h)
//	defer h.Shutdown(ctx)
//
// Clients connect with GET /chat?room=lobby&user=alice and speak the JSON
// protocol described in the README: join, leave and message frames in;
// joined, left, message and error frames out.
//
// Delivery is at most once, as Redis Pub/Sub is: messages published while an
// instance's subscription connection is down are lost to that instance's
// clients, who are then sent {"type":"joined","room":…,"resumed":true}.
package chat

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/net/websocket"
)

// Errors returned by Publish and RoomActive. Callers branch on them with errors.Is.
var (
	ErrInvalidRoom = errors.New("chat: invalid room name (1-64 characters of A-Z a-z 0-9 . _ -)")
	ErrInvalidUser = errors.New("chat: invalid user name (1-32 printable characters)")
	ErrInvalidText = errors.New("chat: empty message text")
	ErrTooLarge    = errors.New("chat: message text too large")
	ErrUnavailable = errors.New("chat: Redis unavailable")
	ErrClosed      = errors.New("chat: handler shut down")
)

// A Handler is one chat instance: an http.Handler serving the WebSocket
// endpoint, relaying messages through Redis. Create it with New and stop it
// with Shutdown.
type Handler struct {
	cfg      config
	id       string
	log      *slog.Logger
	hub      *hub
	bus      *redisBus
	activity *roomActivity
	seq      atomic.Uint64 // message IDs are id-seq
	stats    counters

	mu      sync.Mutex
	clients map[*client]struct{}
	closed  bool

	conns    sync.WaitGroup // connection goroutines: readers and writers
	loops    sync.WaitGroup // the background loops New starts
	stopLoop context.CancelFunc
}

// New returns a Handler that publishes and writes keys through pub and
// subscribes through sub. They must be distinct clients: a connection in
// subscribed state can run nothing else. Both may be a *redis.Client, a
// failover (Sentinel) client or a *redis.ClusterClient.
//
// New panics on a nil client or a *redis.Ring, whose Pub/Sub cannot span
// shards. The Handler runs background goroutines until Shutdown.
func New(pub, sub redis.UniversalClient, opts ...Option) *Handler {
	for _, c := range []redis.UniversalClient{pub, sub} {
		if isNil(c) {
			panic("chat: New needs two non-nil Redis clients, one to publish and one to subscribe")
		}
		if _, ok := c.(*redis.Ring); ok {
			panic("chat: *redis.Ring is not supported: its Pub/Sub covers one shard only; use a Client, a FailoverClient or a ClusterClient")
		}
	}
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	h := &Handler{cfg: cfg, id: cfg.instanceID, clients: make(map[*client]struct{})}
	if h.id == "" {
		h.id = randomHex(6)
	}
	logger := cfg.logger
	if logger == nil {
		logger = slog.Default()
	}
	h.log = logger.With("instance", h.id)
	keys := keyspace(cfg.keyPrefix)
	h.activity = &roomActivity{redis: pub, keys: keys, ttl: cfg.roomTTL}
	h.hub = newHub(cfg.maxRooms)
	h.bus = newRedisBus(pub, sub, keys, h.hub, h.activity, &h.cfg, h.log)
	h.hub.bus = h.bus

	ctx, cancel := context.WithCancel(context.Background())
	h.stopLoop = cancel
	h.loops.Add(4 + publishers)
	for _, q := range h.bus.pubQueues {
		go func() { defer h.loops.Done(); h.bus.publishLoop(ctx, q) }()
	}
	go func() { defer h.loops.Done(); h.bus.receiveLoop(ctx) }()
	go func() { defer h.loops.Done(); h.bus.subscribeLoop(ctx) }()
	go func() { defer h.loops.Done(); h.activity.refreshLoop(ctx, h.hub.roomNames, h.log) }()
	go func() { defer h.loops.Done(); h.pingLoop(ctx) }()
	h.log.Info("chat instance started", "key_prefix", cfg.keyPrefix, "room_ttl", cfg.roomTTL)
	return h
}

// InstanceID returns the ID that tags this instance's log lines and the
// "instance" field of the messages it originates.
func (h *Handler) InstanceID() string { return h.id }

// ServeHTTP checks the request (method, Origin, authentication, query) with
// plain HTTP errors, then upgrades it to a WebSocket and serves the client
// until it leaves or the Handler shuts down.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "chat: WebSocket endpoint, use GET", http.StatusMethodNotAllowed)
		return
	}
	if !h.originAllowed(r) {
		http.Error(w, "chat: cross-origin WebSocket refused", http.StatusForbidden)
		return
	}
	user, status, err := h.userOf(r)
	if err != nil {
		http.Error(w, "chat: "+err.Error(), status)
		return
	}
	rooms, err := h.roomsOf(r)
	if err != nil {
		http.Error(w, "chat: "+err.Error(), http.StatusBadRequest)
		return
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "chat: expected a WebSocket upgrade", http.StatusBadRequest)
		return
	}
	if !h.acquireConn() {
		http.Error(w, "chat: server shutting down", http.StatusServiceUnavailable)
		return
	}
	served := false // the connection was handed to its own goroutine
	defer func() {
		if !served {
			h.conns.Done()
		}
	}()

	netConn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// Middleware wrappers without Unwrap and HTTP/2 cannot hijack.
		h.log.Error("cannot take over the connection for a WebSocket", "remote", r.RemoteAddr, "err", err)
		http.Error(w, "chat: this server cannot upgrade the connection", http.StatusInternalServerError)
		return
	}
	wire := newWireConn(netConn, brw.Reader, &h.cfg)
	srv := websocket.Server{
		// The checks above replace x/net's, which refuses clients that
		// send no Origin and accepts any cross origin.
		Handshake: func(*websocket.Config, *http.Request) error { return nil },
		Handler: func(ws *websocket.Conn) {
			// Serve on a goroutine of the Handler's own and return, so that
			// net/http lets go of the request's state (about 10 KiB of
			// buffers) instead of holding it for the connection's life.
			wire.detach()
			served = true
			// x/net keeps the request, ours, for the connection's life;
			// the handshake was its only use.
			ws.Request().Header, ws.Request().URL = nil, nil
			ws.MaxPayloadBytes = h.cfg.frameLimit()
			ctx, cancel := context.WithCancel(context.Background())
			c := newClient(h, ws, wire, user, cancel)
			go func() {
				defer h.conns.Done()
				defer cancel()
				if !h.register(c) {
					c.closeWith(closeGoingAway, "server shutting down", false)
				}
				c.serve(ctx, rooms)
				h.unregister(c)
				_ = wire.Conn.Close()
			}()
		},
	}
	srv.ServeHTTP(hijacked{w, wire}, handshakeRequest(r))
}

// handshakeRequest is the part of r that x/net's handshake reads. x/net
// keeps the request for the connection's life, so it gets no more, and the
// headers are dropped once the handshake is done (see ServeHTTP).
func handshakeRequest(r *http.Request) *http.Request {
	return &http.Request{Method: r.Method, Host: r.Host, URL: r.URL, Header: r.Header}
}

// hijacked hands x/net/websocket the connection ServeHTTP already took over
// (wrapped, see wireConn), so that x/net never hijacks, or panics, itself.
type hijacked struct {
	http.ResponseWriter
	wire *wireConn
}

func (h hijacked) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return h.wire, bufio.NewReadWriter(h.wire.reader, bufio.NewWriterSize(h.wire, 256)), nil
}

// userOf returns the display name for r, or an HTTP status and error.
func (h *Handler) userOf(r *http.Request) (string, int, error) {
	if h.cfg.authenticate != nil {
		user, err := h.cfg.authenticate(r)
		if err != nil {
			return "", http.StatusUnauthorized, fmt.Errorf("authentication failed: %w", err)
		}
		if user == "" {
			user = "anon-" + randomHex(3)
		}
		return user, 0, nil
	}
	user := r.URL.Query().Get("user")
	if user == "" {
		return "anon-" + randomHex(3), 0, nil
	}
	if !validUser(user) {
		return "", http.StatusBadRequest, ErrInvalidUser
	}
	return user, 0, nil
}

// roomsOf returns the distinct rooms named by ?room=, validated.
func (h *Handler) roomsOf(r *http.Request) ([]string, error) {
	var rooms []string
	for _, room := range r.URL.Query()["room"] {
		if !validRoom(room) {
			return nil, fmt.Errorf("%w: %q", ErrInvalidRoom, room)
		}
		if !slices.Contains(rooms, room) {
			rooms = append(rooms, room)
		}
	}
	if len(rooms) > h.cfg.maxRooms {
		return nil, fmt.Errorf("too many rooms: at most %d per connection", h.cfg.maxRooms)
	}
	return rooms, nil
}

// originAllowed: no Origin (not a browser), the page's own host, or an
// allowed origin. Everything else, "null" included, is refused.
func (h *Handler) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if h.cfg.origins["*"] || h.cfg.origins[strings.ToLower(origin)] {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host)
}

func (h *Handler) acquireConn() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.conns.Add(1)
	return true
}

func (h *Handler) register(c *client) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.clients[c] = struct{}{}
	return !h.closed
}

func (h *Handler) unregister(c *client) {
	h.mu.Lock()
	delete(h.clients, c)
	h.mu.Unlock()
}

// Publish sends text to room as user, through Redis like a client's
// message: every member of the room on every instance receives it. user is
// trusted (it is the server speaking) but must be a valid name.
func (h *Handler) Publish(ctx context.Context, room, user, text string) error {
	switch {
	case !validRoom(room):
		return ErrInvalidRoom
	case !validUser(user):
		return ErrInvalidUser
	case text == "":
		return ErrInvalidText
	case len(text) > h.cfg.maxText:
		return ErrTooLarge
	}
	h.mu.Lock()
	closed := h.closed
	h.mu.Unlock()
	if closed {
		return ErrClosed
	}
	return h.bus.publish(ctx, room, h.newMessage(room, user, text, ""))
}

// newMessage stamps a message with its ID, time and origin and encodes it,
// once: every instance relays these bytes unchanged. Local members see the
// message only when Redis relays it back.
func (h *Handler) newMessage(room, user, text, ref string) []byte {
	m := message{
		Room:     room,
		ID:       h.id + "-" + strconv.FormatUint(h.seq.Add(1), 36),
		User:     user,
		Text:     text,
		TS:       time.Now().UnixMilli(),
		Instance: h.id,
		Ref:      ref,
	}
	return appendMessageFrame(make([]byte, 0, 128+len(text)+len(user)+len(ref)), &m)
}

// RoomActive reports whether room showed a sign of life (a member on some
// instance, or a message) within the room TTL.
func (h *Handler) RoomActive(ctx context.Context, room string) (bool, error) {
	if !validRoom(room) {
		return false, ErrInvalidRoom
	}
	return h.activity.active(ctx, room)
}

// Shutdown closes every client with 1001 (going away), waits for their
// goroutines, stops the background loops and closes the subscription
// connection. If ctx ends first, the remaining connections are dropped
// without a close frame and ctx's error is returned; Shutdown still returns
// only once every goroutine of the Handler has ended. It does not close the
// Redis clients given to New.
func (h *Handler) Shutdown(ctx context.Context) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	clients := make([]*client, 0, len(h.clients))
	for c := range h.clients {
		clients = append(clients, c)
	}
	h.mu.Unlock()

	h.log.Info("shutting down", "clients", len(clients))
	for _, c := range clients {
		c.closeWith(closeGoingAway, "server shutting down", false)
	}
	done := make(chan struct{})
	go func() { h.conns.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		h.mu.Lock()
		for c := range h.clients {
			c.abort()
		}
		h.mu.Unlock()
		<-done // aborted connections end at once: reads and writes fail
	}
	h.stopLoop()
	h.bus.close()
	h.loops.Wait()
	close(h.bus.pubStopped)
	h.log.Info("shut down")
	return err
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// isNil catches typed nils such as (*redis.Client)(nil) in the interface.
func isNil(c redis.UniversalClient) bool {
	if c == nil {
		return true
	}
	v := reflect.ValueOf(c)
	return v.Kind() == reflect.Pointer && v.IsNil()
}
