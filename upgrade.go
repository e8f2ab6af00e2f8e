package chat

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/net/websocket"
)

// ServeHTTP checks the request (method, Origin, authentication) with plain
// HTTP errors, then upgrades it to a WebSocket and serves the client until
// it leaves or the Handler shuts down. A bad query (?user=, ?room=) gets
// the upgrade and then close 1008 with a reason naming the problem.
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
	user, err := h.authenticate(r)
	if err != nil {
		http.Error(w, "chat: "+err.Error(), http.StatusUnauthorized)
		return
	}
	// A bad query is refused after the upgrade, with close 1008 and the
	// reason: a browser learns nothing from a refused handshake (it reports
	// 1006, like a network drop) and would retry for ever.
	user, rooms, history, queryErr := h.parseQuery(r, user)
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "chat: expected a WebSocket upgrade", http.StatusBadRequest)
		return
	}
	if err := h.acquireConn(); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	served := false // the connection was handed to its own goroutine
	defer func() {
		if !served {
			h.releaseConn()
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
			// The connection's context: a life of its own, and the request's
			// values when an application hook may want them (they would
			// otherwise hold the request's context for nothing).
			base := context.Background()
			if h.cfg.authorize != nil || h.cfg.onMessage != nil {
				base = context.WithoutCancel(r.Context())
			}
			ctx, cancel := context.WithCancel(base)
			c := newClient(h, ws, wire, user, cancel)
			h.stats.connectionsAccepted.Add(1)
			go func() {
				defer h.releaseConn()
				defer cancel()
				switch {
				case !h.register(c):
					c.closeWith(closeGoingAway, "server shutting down", false)
				case queryErr != nil:
					rooms = nil
					c.closeWith(closePolicy, queryErr.Error(), false)
				}
				c.serve(ctx, rooms, history)
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

// authenticate returns the name the authenticate hook gives r's user; an
// error means 401. Without a hook the name comes from the query (parseQuery).
func (h *Handler) authenticate(r *http.Request) (string, error) {
	if h.cfg.authenticate == nil {
		return "", nil
	}
	user, err := h.cfg.authenticate(r)
	if err != nil {
		return "", fmt.Errorf("authentication failed: %w", err)
	}
	return user, nil
}

// parseQuery returns the user's display name (user, the hook's choice, or
// else ?user=; an anonymous one when neither names one), validated
// whatever its source, the distinct rooms named by ?room=, and how many of
// their latest messages ?history= asks for; or the first problem with them.
func (h *Handler) parseQuery(r *http.Request, user string) (string, []string, int, error) {
	q := r.URL.Query()
	if h.cfg.authenticate == nil {
		user = q.Get("user")
	}
	// The hook's names too: a name is shown to every member of a room.
	if user != "" && !validUser(user) {
		return "", nil, 0, ErrInvalidUser
	}
	if user == "" {
		user = "anon-" + randomHex(3)
	}
	var rooms []string
	for _, room := range q["room"] {
		if !validRoom(room) {
			return "", nil, 0, fmt.Errorf("%w: %q", ErrInvalidRoom, room)
		}
		if !slices.Contains(rooms, room) {
			rooms = append(rooms, room)
		}
	}
	if len(rooms) > h.cfg.maxRooms {
		return "", nil, 0, fmt.Errorf("chat: too many rooms: at most %d per connection", h.cfg.maxRooms)
	}
	history := 0
	if v := q.Get("history"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return "", nil, 0, fmt.Errorf("chat: invalid history %q: a count of messages, 0 or more", v)
		}
		history = min(n, h.cfg.history)
	}
	return user, rooms, history, nil
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

// acquireConn admits one more connection, or says why not: the Handler
// is shut down or serves WithMaxConnections already (counted in Stats).
func (h *Handler) acquireConn() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.closed:
		return errors.New("chat: server shutting down")
	case h.open >= h.cfg.maxConns:
		h.stats.connectionsRefused.Add(1)
		return errors.New("chat: too many connections; try again later")
	}
	h.open++
	h.conns.Add(1)
	return nil
}

// releaseConn ends what acquireConn admitted.
func (h *Handler) releaseConn() {
	h.mu.Lock()
	h.open--
	h.mu.Unlock()
	h.conns.Done()
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
