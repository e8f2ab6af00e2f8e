package chat

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// An Option configures a Handler. The zero configuration is safe for the
// open internet; options loosen or tighten it.
type Option func(*config)

type config struct {
	logger       *slog.Logger
	instanceID   string
	roomTTL      time.Duration
	keyPrefix    string
	authenticate func(*http.Request) (string, error)
	authorize    func(ctx context.Context, user, room string) error
	onMessage    func(ctx context.Context, m *Message) error
	origins      map[string]bool // lower-cased; "*" allows every origin
	maxText      int
	sendQueue    int     // bytes of queued frames per connection
	ratePerSec   float64 // <= 0: unlimited
	rateBurst    int
	maxRooms     int
	maxConns     int
	history      int  // messages kept per room
	classic      bool // WithClassicPubSub
	pingInterval time.Duration
	readTimeout  time.Duration
	writeTimeout time.Duration

	// Not options: fixed policy, variables only so tests can shorten them.
	subscribeTimeout time.Duration // Redis must confirm a SUBSCRIBE within this
	publishTimeout   time.Duration // bound on one publish round trip
	redisPing        time.Duration // liveness probe of the subscription connection
	closeGrace       time.Duration // wait for the peer's close frame after ours
	// frameTimeout bounds how long a client may take to send one message,
	// from the first byte of its first frame to the last byte of its last
	// fragment. Without it a client could hold a nearly complete frame open
	// for ever by sending a byte every readTimeout.
	frameTimeout time.Duration
	// presenceTTL is how long a user stays present after its instance's
	// last refresh: an instance that dies takes its users with it within it.
	presenceTTL time.Duration
}

func defaultConfig() config {
	return config{
		roomTTL:          5 * time.Minute,
		keyPrefix:        "chat:",
		maxText:          4096,
		sendQueue:        1 << 20,
		ratePerSec:       20,
		rateBurst:        40,
		maxRooms:         32,
		maxConns:         10000,
		history:          100,
		pingInterval:     25 * time.Second,
		readTimeout:      60 * time.Second,
		writeTimeout:     10 * time.Second,
		subscribeTimeout: 5 * time.Second,
		publishTimeout:   3 * time.Second,
		redisPing:        500 * time.Millisecond,
		closeGrace:       2 * time.Second,
		frameTimeout:     10 * time.Second,
		presenceTTL:      60 * time.Second,
	}
}

// frameLimit is the largest WebSocket frame a client may send. It leaves
// room for a maximal text once JSON-escaped (up to 6 bytes per byte, as in
// "\u0001") plus the other fields, and is never below 32 KiB.
func (c *config) frameLimit() int {
	return max(32<<10, 6*c.maxText+1024)
}

// WithLogger sets the logger; every line carries instance=<InstanceID>.
// The default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = l }
}

// WithInstanceID replaces the generated instance ID (for example with a pod
// name). It tags log lines and the "instance" field of messages.
func WithInstanceID(id string) Option {
	return func(c *config) { c.instanceID = id }
}

// WithRoomTTL sets how long a room's activity key outlives its last sign of
// life (a member on some instance, or a message). Default 5 minutes; less
// than a second keeps the default.
func WithRoomTTL(d time.Duration) Option {
	return func(c *config) {
		if d >= time.Second {
			c.roomTTL = d
		}
	}
}

// WithKeyPrefix sets the prefix of every Redis key and channel. Default "chat:".
func WithKeyPrefix(p string) Option {
	return func(c *config) { c.keyPrefix = p }
}

// WithAuthenticate sets a hook that runs before the WebSocket upgrade. It
// returns the user's display name; an error answers HTTP 401 and no upgrade
// happens. With a hook, the "user" query parameter is ignored; an empty name
// gets an anonymous one.
func WithAuthenticate(fn func(*http.Request) (user string, err error)) Option {
	return func(c *config) { c.authenticate = fn }
}

// WithAuthorize sets a hook that decides where a user may go: it runs
// before a client is subscribed to a room (a join frame, or ?room= at
// connect), and an error refuses the room: the client gets a "forbidden"
// error frame with the error's text and its join's ref, and the connection
// stays (at connect: close 1008 with the reason). The client is never
// subscribed, not even briefly. ctx carries the values of the upgrade
// request's context (what middleware put there: a session, say) and ends
// with the connection. The hook runs on the connection's own reader: a slow
// one delays that client alone; one that panics is recovered, logged, and
// answered "forbidden". Whether a kicked user may come back is its
// decision too.
func WithAuthorize(fn func(ctx context.Context, user, room string) error) Option {
	return func(c *config) { c.authorize = fn }
}

// WithOnMessage sets a hook that runs before a client's message is
// published: it may change m.Text (moderation), which is then checked again
// (empty: bad_request, too long: too_large), or refuse the message with an
// error, whose text the sender gets in a "forbidden" error frame. Other
// fields of m are the server's and changes to them are ignored. ctx is as
// for WithAuthorize; so is the treatment of a slow or panicking hook.
// Messages sent with Handler.Publish do not pass through it.
func WithOnMessage(fn func(ctx context.Context, m *Message) error) Option {
	return func(c *config) { c.onMessage = fn }
}

// WithAllowedOrigins lists the cross-origin pages allowed to connect, as
// "scheme://host[:port]" ("*" allows any). Same-host pages and clients that
// send no Origin header (non-browsers) are always allowed.
func WithAllowedOrigins(origins ...string) Option {
	return func(c *config) {
		if c.origins == nil {
			c.origins = make(map[string]bool)
		}
		for _, o := range origins {
			c.origins[strings.ToLower(strings.TrimRight(o, "/"))] = true
		}
	}
}

// WithMaxMessageBytes sets the longest accepted message text in bytes
// (default 4096). Longer texts get a "too_large" error; the connection stays.
// n <= 0 keeps the default.
func WithMaxMessageBytes(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.maxText = n
		}
	}
}

// WithSendQueue sets how many bytes of frames may wait for one client that
// reads slowly (default 1 MiB: a few thousand chat messages). A client whose
// queue would grow past it is closed with 1013 so that it never slows anyone
// else. bytes <= 0 keeps the default.
func WithSendQueue(bytes int) Option {
	return func(c *config) {
		if bytes > 0 {
			c.sendQueue = bytes
		}
	}
}

// WithRateLimit sets how many frames per second a connection may send, with
// bursts of burst (default 20/s, bursts of 40). Frames over the limit get a
// "rate_limited" error. perSecond <= 0 removes the limit.
func WithRateLimit(perSecond float64, burst int) Option {
	return func(c *config) {
		c.ratePerSec = perSecond
		c.rateBurst = max(burst, 1)
	}
}

// WithMaxRooms sets how many rooms one connection may be in (default 32).
// n <= 0 keeps the default.
func WithMaxRooms(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.maxRooms = n
		}
	}
}

// WithHistory sets how many of a room's latest messages Redis keeps
// (default 100; 0 keeps none), for joins that ask for history or recovery
// and for History. The history lives as long as the room: its TTL is the
// room TTL, refreshed with the room key, so WithRoomTTL(24*time.Hour) keeps
// a day of history for quiet rooms. Messages are numbered (seq) either way.
// n < 0 keeps the default.
func WithHistory(n int) Option {
	return func(c *config) {
		if n >= 0 {
			c.history = n
		}
	}
}

// WithMaxConnections sets how many WebSocket connections the Handler
// serves at once (default 10,000: about 120 MiB of memory when idle). An
// upgrade over it is refused with HTTP 503, before any work is done for
// it, and counted in Stats. A limit per client IP belongs in the
// application, which knows where the client's address is (behind a proxy,
// not in RemoteAddr): see the package's examples. n <= 0 keeps the default.
func WithMaxConnections(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.maxConns = n
		}
	}
}

// WithTimeouts sets the keepalive policy: a ping every ping, a connection
// from which nothing was read for read is dropped, and every write must
// finish within write. Defaults 25 s, 60 s, 10 s. Zero keeps a default.
func WithTimeouts(ping, read, write time.Duration) Option {
	return func(c *config) {
		if ping > 0 {
			c.pingInterval = ping
		}
		if read > 0 {
			c.readTimeout = read
		}
		if write > 0 {
			c.writeTimeout = write
		}
	}
}

// WithClassicPubSub keeps classic Pub/Sub (PUBLISH, SUBSCRIBE) when both
// clients are *redis.ClusterClient, where New otherwise uses Redis 7's
// sharded Pub/Sub (SPUBLISH, SSUBSCRIBE). Classic Pub/Sub on a cluster
// copies every message to every node, so it does not scale with the
// cluster; it is for Redis 6 clusters, which have no sharded Pub/Sub. It
// changes nothing for other clients, which always use classic Pub/Sub.
func WithClassicPubSub() Option {
	return func(c *config) { c.classic = true }
}
