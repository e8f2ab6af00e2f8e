package chat

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/websocket"
)

// client is one WebSocket connection. Its reader is a goroutine of the
// Handler's, started by ServeHTTP once the upgrade is done; its writer is
// started only when there is something to write and ends when the queue is
// empty, so an idle connection costs one goroutine and no queue.
type client struct {
	h      *Handler
	ws     *websocket.Conn
	wire   *wireConn
	user   string
	cancel context.CancelFunc // ends the connection's context (in-flight publishes)

	// rooms maps each room the client is in to whether it was told "joined"
	// (false: waiting for Redis to confirm). Guarded by hub.mu.
	rooms map[string]bool

	limiter    rateLimiter // every frame; reader only
	joins      rateLimiter // joins, which make Redis hold a key each; reader only
	pingBucket uint8       // which tick of the keepalive loop pings this client
	lane       int         // the publisher lane that sends this client's messages, in order

	mu          sync.Mutex
	queue       [][]byte // frames waiting for the writer
	queued      int      // bytes in queue, held to the send-queue budget
	spare       [][]byte // the writer's last batch, reused as the next queue
	pingDue     bool
	pong        []byte // the payload of the latest ping to answer; nil: none
	closeMsg    []byte // close frame payload the writer sends after the queue
	writing     bool   // a writer goroutine is running
	closing     bool   // a close frame was queued or the connection failed: queue nothing more
	writerDone  chan struct{}
	writeLoopFn func() // c.writeLoop, made once: "go c.writeLoop()" would allocate a closure per start
}

func newClient(h *Handler, ws *websocket.Conn, wire *wireConn, user string, cancel context.CancelFunc) *client {
	c := &client{
		h:          h,
		ws:         ws,
		wire:       wire,
		user:       user,
		cancel:     cancel,
		rooms:      make(map[string]bool),
		limiter:    newRateLimiter(h.cfg.ratePerSec, h.cfg.rateBurst),
		joins:      newJoinLimiter(&h.cfg),
		pingBucket: uint8(rand.IntN(pingBuckets)),
		lane:       rand.IntN(publishLanes),
		writerDone: make(chan struct{}),
	}
	c.writeLoopFn = c.writeLoop
	return c
}

// serve joins the rooms named at connect, then reads frames until the
// connection ends (reader.go), and cleans up.
// Its frame is small: an idle connection waits below it (readFrames).
func (c *client) serve(ctx context.Context, rooms []string, history int) {
	c.start(ctx, rooms, history)
	c.finish(c.readFrames(ctx))
}

// start joins the rooms named at connect; a room the authorize hook
// refuses closes the connection with 1008 and the hook's reason.
func (c *client) start(ctx context.Context, rooms []string, history int) {
	c.h.log.Debug("client connected", "user", c.user, "remote", c.wire.RemoteAddr().String())
	for _, room := range rooms {
		if err := c.authorize(ctx, room); err != nil {
			c.h.stats.forbidden.Add(1)
			c.closeWith(closePolicy, "forbidden: "+room+": "+err.Error(), false)
			return
		}
	}
	for _, room := range rooms {
		c.h.join(c, room, "", joinWant{history: history})
	}
}

// handle acts on one text message from the client; refused: it was over
// the rate limit.
func (c *client) handle(ctx context.Context, data []byte, refused bool) {
	f, rerr := decodeFrame(data)
	if refused {
		c.sendError(codeRateLimited, "too many frames; slow down", f.Ref)
		return
	}
	if rerr != nil {
		c.sendError(rerr.code, rerr.msg, f.Ref)
		return
	}
	switch f.Type {
	case typeJoin:
		if err := c.authorize(ctx, f.Room); err != nil {
			c.sendError(codeForbidden, err.Error(), f.Ref)
			return
		}
		want := joinWant{since: f.Since}
		if f.History != nil {
			want.history = min(*f.History, c.h.cfg.history)
		}
		c.h.join(c, f.Room, f.Ref, want)
	case typeLeave:
		c.h.leave(c, f.Room, f.Ref)
	case typePresence:
		if !c.h.hub.isJoined(c, f.Room) {
			c.sendError(codeNotJoined, "join "+f.Room+" before asking who is there", f.Ref)
			return
		}
		c.h.answerPresence(c, f.Room, f.Ref)
	case typeMessage:
		if len(f.Text) > c.h.cfg.maxText {
			c.sendError(codeTooLarge, "text longer than "+strconv.Itoa(c.h.cfg.maxText)+" bytes", f.Ref)
			return
		}
		if !c.h.hub.isJoined(c, f.Room) {
			c.sendError(codeNotJoined, "join "+f.Room+" before sending to it", f.Ref)
			return
		}
		m := Message{Room: f.Room, User: c.user, Text: f.Text, Ref: f.Ref}
		if err := c.moderate(ctx, &m); err != nil {
			c.sendError(codeForbidden, err.Error(), f.Ref)
			return
		}
		switch {
		case m.Text == "":
			c.sendError(codeBadRequest, "the message hook left no text", f.Ref)
			return
		case len(m.Text) > c.h.cfg.maxText:
			c.sendError(codeTooLarge, "the message hook made the text longer than "+strconv.Itoa(c.h.cfg.maxText)+" bytes", f.Ref)
			return
		}
		// Members, the sender included, see it when Redis relays it back.
		c.h.pub.send(ctx, c.lane, f.Room, c.user, m.Text, f.Ref, c)
	}
}

// published tells the sender when Redis did not take its message
// (publishOutcome). Success needs no word: the message itself comes back.
func (c *client) published(ref string, err error) {
	if err != nil {
		c.sendError(codeUnavailable, "message not sent: Redis is unavailable", ref)
	}
}

// sendError answers a request with an error frame, counted by its code.
func (c *client) sendError(code, msg, ref string) {
	switch code {
	case codeRateLimited:
		c.h.stats.rateLimited.Add(1)
	case codeUnavailable:
		c.h.stats.unavailable.Add(1)
	case codeForbidden:
		c.h.stats.forbidden.Add(1)
	default:
		c.h.stats.badFrames.Add(1)
	}
	c.send(errorFrame(code, msg, ref))
}

// send queues frame for the client without ever blocking. A client whose
// queued frames would exceed the send-queue budget cannot keep up: it is
// closed with 1013 so that it slows nobody else. frame may be shared with
// other clients and is never modified.
func (c *client) send(frame []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return
	}
	if c.queued+len(frame) > c.h.cfg.sendQueue {
		c.h.stats.slowClients.Add(1)
		c.closeLocked(closeTryLater, "too slow: send queue full", true)
		return
	}
	c.queue = append(c.queue, frame)
	c.queued += len(frame)
	c.startWriterLocked()
}

func (c *client) ping() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closing {
		c.pingDue = true
		c.startWriterLocked()
	}
}

// answerPing has the writer answer a ping with payload, before its next
// batch; start: now, rather than with whatever it sends next. A newer ping
// replaces one not answered yet (RFC 6455 §5.5.3 allows it).
func (c *client) answerPing(payload []byte, start bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return
	}
	if payload == nil {
		payload = []byte{}
	}
	c.pong = payload
	if start {
		c.startWriterLocked()
	}
}

func (c *client) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// closeWith sends a close frame after what is queued (or instead of it, with
// dropQueue) and gives the peer closeGrace to answer before reads end.
func (c *client) closeWith(code uint16, reason string, dropQueue bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeLocked(code, reason, dropQueue)
}

func (c *client) closeLocked(code uint16, reason string, dropQueue bool) {
	if c.closing {
		return
	}
	c.closing = true
	if dropQueue {
		c.queue, c.queued = nil, 0
	}
	c.closeMsg = closePayload(code, reason)
	c.startWriterLocked()
	c.wire.endReadsBy(time.Now().Add(c.h.cfg.closeGrace))
}

// abort drops the connection at once, without a close frame.
func (c *client) abort() {
	c.mu.Lock()
	c.closing = true
	c.queue, c.queued = nil, 0
	c.mu.Unlock()
	c.cancel()
	_ = c.wire.Conn.Close()
}

func (c *client) startWriterLocked() {
	if !c.writing {
		c.writing = true
		c.h.conns.Add(1) // the reader is alive: the count is above zero
		go c.writeLoopFn()
	}
}

// writeLoop sends everything queued, many frames per syscall, until the
// queue is empty; then it ends.
func (c *client) writeLoop() {
	defer c.h.conns.Done()
	bp := writeBuffers.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= maxPooledBuffer {
			writeBuffers.Put(bp)
		}
	}()
	for {
		c.mu.Lock()
		batch, ping, pong, closeMsg := c.queue, c.pingDue, c.pong, c.closeMsg
		c.queue, c.spare, c.pingDue, c.pong, c.closeMsg = c.spare, nil, false, nil, nil
		c.queued = 0
		if len(batch) == 0 && !ping && pong == nil && closeMsg == nil {
			c.writing = false
			if cap(c.queue) > idleQueueCap {
				c.queue = nil // an idle client holds no large queue
			}
			if c.closing {
				close(c.writerDone)
			}
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()

		if closeMsg != nil {
			c.logClose(closeMsg) // here, outside every lock, not where the close was decided
		}
		b := (*bp)[:0]
		if pong != nil {
			b = appendFrame(b, opPong, pong)
		}
		b = appendBatch(b, ping, batch, closeMsg)
		*bp = b
		_, err := c.wire.Write(b)
		clear(batch) // let the frames go
		c.mu.Lock()
		c.spare = batch[:0]
		if err != nil && !c.closing {
			// The peer is gone or stuck past the write timeout.
			c.closing = true
			c.queue, c.queued = nil, 0
			c.mu.Unlock()
			c.h.log.Debug("write failed: dropping client", "user", c.user, "err", err)
			_ = c.wire.Conn.Close() // ends the reader too
			continue
		}
		c.mu.Unlock()
	}
}

// logClose records why the server closes a connection: a slow client is a
// warning, a client that broke the protocol or a policy worth noting, the
// rest routine.
func (c *client) logClose(payload []byte) {
	code := binary.BigEndian.Uint16(payload)
	level := slog.LevelDebug
	switch code {
	case closeTryLater:
		level = slog.LevelWarn
	case closeTooBig, closeProtocol, closeBadData, closePolicy:
		level = slog.LevelInfo
	}
	c.h.log.Log(context.Background(), level, "closing client", "user", c.user, "code", code, "reason", string(payload[2:]))
}

// appendBatch encodes what the writer sends in one write: a ping if due,
// the queued frames, and a close frame if one was asked for. It sizes b once,
// so that large batches do not grow it step by step.
func appendBatch(b []byte, ping bool, batch [][]byte, closeMsg []byte) []byte {
	size := len(closeMsg) + 2*maxFrameHeader
	for _, f := range batch {
		size += len(f) + maxFrameHeader
	}
	b = slices.Grow(b, size)
	if ping {
		b = appendFrame(b, opPing, nil)
	}
	for _, f := range batch {
		b = appendFrame(b, opText, f)
	}
	if closeMsg != nil {
		b = appendFrame(b, opClose, closeMsg)
	}
	return b
}

// idleQueueCap is the queue capacity an idle client keeps, so that the
// next message to it does not allocate.
const idleQueueCap = 4

// writeBuffers holds the buffers writers assemble their batches in, so that
// an idle client owns none.
var writeBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

const maxPooledBuffer = 64 << 10

// finish runs when the reader stops: the client leaves its rooms, a close
// frame from the peer is answered, and the writer is waited for.
func (c *client) finish(readErr error) {
	c.h.leaveAll(c)
	c.cancel()
	c.mu.Lock()
	if !c.closing && errors.Is(readErr, io.EOF) {
		// The peer closed first: answer its close frame (RFC 6455 §5.5.1).
		c.closeMsg = closePayload(closeNormal, "")
		c.startWriterLocked()
	}
	c.closing = true
	c.queue, c.queued = nil, 0
	wait := c.writing
	c.mu.Unlock()
	if !errors.Is(readErr, io.EOF) {
		// Dead, silent or too slow: reset rather than leave the kernel
		// an orphan socket with unsent data, which can linger and die
		// without telling the peer. This also unblocks a stuck writer.
		c.wire.reset()
	}
	if wait {
		<-c.writerDone
	}
	c.h.log.Debug("client disconnected", "user", c.user, "reason", readErr)
}

// pingBuckets spreads pings over the interval so that a crowd of clients
// that connected together is not pinged together.
const pingBuckets = 16

// pingLoop pings every client once per ping interval, a sixteenth of them at
// each tick. Pongs (or any other frame) keep the client's reads alive.
func (h *Handler) pingLoop(ctx context.Context) {
	t := time.NewTicker(h.cfg.pingInterval / pingBuckets)
	defer t.Stop()
	var tick uint8
	var due []*client
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h.mu.Lock()
		for c := range h.clients {
			if c.pingBucket == tick {
				due = append(due, c)
			}
		}
		h.mu.Unlock()
		for _, c := range due {
			c.ping()
		}
		clear(due)
		due = due[:0]
		tick = (tick + 1) % pingBuckets
	}
}
