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
// Every message gets its room's next seq in Redis, and the room's last
// messages stay there (WithHistory): a join can ask for them, a client that
// reconnects gets exactly what it missed (since), and an instance that lost
// its subscription connection fills the gap for its members from the
// history before anything live. A Redis that stalls loses nothing: a silent
// subscription connection is replaced make-before-break.
package chat

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"reflect"
	"sync"

	"github.com/redis/go-redis/v9"
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
//
// A Handler is the go-between of its components (see the README's
// Architecture section): clients (client.go) read and write the
// connections, the hub (hub.go) knows who is in which room, the publisher
// (publish.go) and the subscriber (subscribe.go, link.go, receive.go) talk to Redis,
// and roomActivity (ttl.go) keeps the room keys alive. A client asks its
// Handler for what each frame requests; the hub, the publisher and the
// subscriber never call one another, and the latter two report up only
// through subscriptionEvents and publishOutcome.
type Handler struct {
	cfg      config
	id       string
	log      *slog.Logger
	hub      *hub
	pub      *publisher
	sub      *subscriber
	activity *roomActivity
	presence *presence
	stats    counters

	// The publishing client and the key space, for the Handler's own reads
	// and writes: a join's read, History, Kick.
	redis redis.UniversalClient
	keys  keyspace
	mode  pubsubMode

	// roomsMu makes each change of the hub's rooms and the matching update
	// of the subscriber one step (rooms.go).
	roomsMu sync.Mutex

	mu      sync.Mutex
	clients map[*client]struct{}
	open    int // connections admitted, upgrading or served
	closed  bool

	conns     sync.WaitGroup // connection goroutines: readers and writers
	loops     sync.WaitGroup // the Handler's own loops: keepalive, join expiry, room keys
	stopLoops context.CancelFunc
}

// New returns a Handler that publishes and writes keys through pub and
// subscribes through sub. They must be distinct clients: a connection in
// subscribed state can run nothing else. Both may be a *redis.Client, a
// failover (Sentinel) client or a *redis.ClusterClient.
//
// When both are *redis.ClusterClient, rooms use Redis 7's sharded Pub/Sub:
// each room's messages are published (SPUBLISH) and subscribed (SSUBSCRIBE)
// on the master that owns the room's slot only, with one subscription
// connection per master that owns one of the instance's rooms, so the
// cluster's Pub/Sub capacity grows with its masters. A room whose slot
// moves (resharding) or whose master fails over is subscribed again on its
// new owner and the gap is filled from the history. WithClassicPubSub
// keeps classic Pub/Sub, for Redis 6.
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
	h.redis, h.keys = pub, keys
	_, pubCluster := pub.(*redis.ClusterClient)
	_, subCluster := sub.(*redis.ClusterClient)
	h.mode = pubsubMode(pubCluster && subCluster && !cfg.classic)
	h.activity = &roomActivity{redis: pub, keys: keys, ttl: cfg.roomTTL}
	h.hub = newHub(cfg.maxRooms, cfg.history > 0)
	h.presence = &presence{
		redis: pub, mode: h.mode, keys: keys, instance: h.id, ttl: cfg.presenceTTL, timeout: cfg.publishTimeout,
		log: h.log, local: h.hub.localUsers, wake: make(chan struct{}, 1),
	}
	h.hub.presence = func(room, user string, here bool) {
		h.presence.enqueue(presenceOp{room: room, user: user, joined: here})
	}
	h.pub = newPublisher(pub, h.mode, keys, h.id, &h.cfg, h.log, &h.stats)
	h.sub = newSubscriber(sub, h.mode == shardedPubSub, keys, h, &h.cfg, h.log, &h.stats)

	h.pub.start()
	h.sub.start()
	ctx, cancel := context.WithCancel(context.Background())
	h.stopLoops = cancel
	h.loops.Go(func() { h.pingLoop(ctx) })
	h.loops.Go(func() { h.expireJoins(ctx) })
	h.loops.Go(func() { h.activity.refreshLoop(ctx, h.hub.roomNames, h.log) })
	h.loops.Go(func() { h.presence.run(ctx) })
	h.log.Info("chat instance started", "key_prefix", cfg.keyPrefix, "room_ttl", cfg.roomTTL)
	return h
}

// InstanceID returns the ID that tags this instance's log lines and the
// "instance" field of the messages it originates.
func (h *Handler) InstanceID() string { return h.id }

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
	return h.pub.publish(ctx, room, user, text)
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
	h.stopLoops()
	h.loops.Wait()
	h.sub.close()
	h.pub.close()
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
