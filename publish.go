package chat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// publishScript numbers a message, keeps it in the room's history and
// publishes it, atomically, in one round trip. Keyed on the room's keys, it
// runs on the node owning the room's slot in a Cluster, so each room has one
// ordering point, and Redis's order and the sequence agree.
//
// The message was encoded before Redis numbered it, so the script splices
// its seq in before the closing brace: the stream entry and the published
// payload are the same bytes, and every member gets "seq" without a second
// encoding. seq 1 starts an epoch (a new room key, or one Redis lost): the
// epoch is set if the key has none, and an old epoch's history is dropped.
//
// KEYS: room hash, history stream. ARGV: TTL (s), channel, frame, history
// size, publish command (PUBLISH or SPUBLISH, pubsubMode).
const publishScript = `local seq = redis.call('HINCRBY', KEYS[1], 's', 1)
if seq == 1 then
  local t = redis.call('TIME')
  redis.call('HSETNX', KEYS[1], 'e', t[1] .. '.' .. t[2])
  redis.call('DEL', KEYS[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
local msg = string.sub(ARGV[3], 1, -2) .. ',"seq":' .. seq .. '}'
if ARGV[4] ~= '0' then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], seq .. '-0', 'm', msg)
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
return redis.call(ARGV[5], ARGV[2], msg)`

// Publishing is pipelined and batched. Each lane is a queue with one
// goroutine that sends everything waiting in it as one pipeline, so under
// load a Redis round trip, and its syscalls, carries many messages. A
// sender always uses the same lane, whose queue and single pipeline in
// flight keep its messages in order. Senders do not wait for Redis before
// their next message, so a burst stays a burst all the way to the members'
// sockets, where each writer sends it in one write.
const (
	publishLanes    = 4   // pipelines in flight at once
	maxPublishBatch = 256 // messages per pipeline, and the length of each lane's queue
)

// publishOutcome hears how a queued message fared: err is nil once Redis
// took it, ErrUnavailable-wrapped otherwise. A client implements it to
// answer its sender; Handler.Publish waits on a resultChan. It is called
// from a publisher goroutine and must not block.
type publishOutcome interface {
	published(ref string, err error)
}

// publishRequest is one message waiting in a lane.
type publishRequest struct {
	room     string
	frame    []byte // the encoded message frame, as every member will receive it
	ref      string // the sender's ref, handed back with the outcome
	outcome  publishOutcome
	deadline time.Time // the sender hears an outcome by then
}

// publisher sends messages to Redis through the pub client. It stamps each
// message with its origin (ID, time, instance), encodes it once, and queues
// it on a lane; New starts its goroutines with start and Shutdown stops them
// with close.
type publisher struct {
	redis      redis.UniversalClient
	keys       keyspace
	origin     string        // the instance ID, in every message's "instance" and ID
	ttl        int64         // room TTL in seconds, for the script
	history    int           // messages kept per room; 0: none
	publishCmd string        // PUBLISH or SPUBLISH (pubsubMode)
	timeout    time.Duration // bound on one pipeline's round trip
	log        *slog.Logger
	stats      *counters

	seq    atomic.Uint64 // message IDs are origin-seq
	lanes  [publishLanes]*lane
	stop   context.CancelFunc
	closed chan struct{} // closed when the lanes' goroutines have returned
	wg     sync.WaitGroup
}

func newPublisher(client redis.UniversalClient, mode pubsubMode, keys keyspace, origin string, cfg *config, log *slog.Logger, stats *counters) *publisher {
	p := &publisher{
		redis: client, keys: keys, origin: origin, publishCmd: mode.publishCommand(),
		ttl:     int64(cfg.roomTTL / time.Second),
		history: cfg.history,
		timeout: cfg.publishTimeout,
		log:     log, stats: stats,
		stop:   func() {},
		closed: make(chan struct{}),
	}
	for i := range p.lanes {
		p.lanes[i] = newLane(p)
	}
	return p
}

// start runs one goroutine per lane until close.
func (p *publisher) start() {
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	for _, l := range p.lanes {
		p.wg.Go(func() { l.drain(ctx) })
	}
}

// close stops the lanes and waits for them; a batch already taken is
// finished first. Messages still queued get no outcome: their senders are
// gone (clients) or see ErrClosed (Publish).
func (p *publisher) close() {
	p.stop()
	p.wg.Wait()
	close(p.closed)
}

// message stamps a message with its ID, time and origin and encodes it,
// once: every instance relays these bytes unchanged.
func (p *publisher) message(room, user, text, ref string) []byte {
	m := Message{
		Room:     room,
		ID:       p.origin + "-" + strconv.FormatUint(p.seq.Add(1), 36),
		User:     user,
		Text:     text,
		TS:       time.Now().UnixMilli(),
		Instance: p.origin,
		Ref:      ref,
	}
	return appendMessageFrame(make([]byte, 0, 128+len(text)+len(user)+len(ref)), &m)
}

// send queues a message from user on lane and returns without waiting for
// Redis; outcome hears the result. It blocks only while the lane is full,
// which slows the sender down, or until ctx ends.
func (p *publisher) send(ctx context.Context, lane int, room, user, text, ref string, outcome publishOutcome) {
	req := &publishRequest{
		room: room, frame: p.message(room, user, text, ref), ref: ref, outcome: outcome,
		deadline: time.Now().Add(p.timeout),
	}
	select {
	case p.lanes[lane].queue <- req:
	case <-ctx.Done():
	}
}

// resultChan is the outcome of one message whose sender waits for it.
type resultChan chan error

func (r resultChan) published(_ string, err error) { r <- err }

// publish sends one message and waits until Redis has answered, ctx ends,
// or the publisher stops. Every failure is ErrUnavailable.
func (p *publisher) publish(ctx context.Context, room, user, text string) error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	done := make(resultChan, 1) // buffered: the lane never waits
	req := &publishRequest{room: room, frame: p.message(room, user, text, ""), outcome: done, deadline: time.Now().Add(p.timeout)}
	var err error
	select {
	case p.lanes[rand.IntN(publishLanes)].queue <- req:
		select {
		case err = <-done:
		case <-ctx.Done():
			err = ctx.Err()
		case <-p.closed:
			err = ErrClosed
		}
	case <-ctx.Done():
		err = ctx.Err()
	case <-p.closed:
		err = ErrClosed
	}
	if err != nil {
		return fmt.Errorf("%w: publish to %s: %v", ErrUnavailable, room, err)
	}
	return nil
}

// lane is one queue of messages and the goroutine that sends them.
//
// go-redis bounds a command by the client's own socket timeouts (its
// ReadTimeout, 3 s by default, or none), not by a context's deadline, unless
// the client was built with ContextTimeoutEnabled; and the Handler gets
// clients it did not build. So the lane keeps the publish timeout itself:
// when Redis has not answered a pipeline by its oldest message's deadline,
// the stall timer answers the whole batch "unavailable", and until Redis
// answers it holds what queues meanwhile, refusing each message unsent when
// its own deadline comes. A sender hears within the publish timeout,
// whatever the client.
type lane struct {
	p     *publisher
	queue chan *publishRequest
	batch []*publishRequest // the messages in flight; read by refuse while stalled
	held  []*publishRequest // queued during a stall, not yet due: the next batch

	stall   *time.Timer   // runs refuse; armed while a pipeline is out
	unstuck chan struct{} // the pipeline returned: refuse stops
	refused chan struct{} // refuse has stopped
}

func newLane(p *publisher) *lane {
	l := &lane{
		p:       p,
		queue:   make(chan *publishRequest, maxPublishBatch),
		batch:   make([]*publishRequest, 0, maxPublishBatch),
		held:    make([]*publishRequest, 0, maxPublishBatch),
		unstuck: make(chan struct{}, 1),
		refused: make(chan struct{}, 1),
	}
	l.stall = time.AfterFunc(time.Hour, l.refuse)
	l.stall.Stop()
	return l
}

// errStalled is the outcome of messages that Redis did not answer in time.
var errStalled = errors.New("no answer from Redis within the publish timeout")

// drain sends whatever is queued, up to maxPublishBatch messages, as one
// pipeline, and reports each message's outcome.
func (l *lane) drain(ctx context.Context) {
	p := l.p
	for {
		if len(l.held) > 0 {
			l.batch = append(l.batch, l.held...)
			clear(l.held)
			l.held = l.held[:0]
		} else {
			select {
			case <-ctx.Done():
				return
			case req := <-l.queue:
				l.batch = append(l.batch, req)
			}
		}
	more:
		for len(l.batch) < maxPublishBatch {
			select {
			case req := <-l.queue:
				l.batch = append(l.batch, req)
			default:
				break more
			}
		}
		l.stall.Reset(time.Until(l.batch[0].deadline))
		// A batch taken is finished, even during Shutdown.
		errs := p.pipeline(context.WithoutCancel(ctx), l.batch)
		stalled := !l.stall.Stop()
		if stalled {
			l.unstuck <- struct{}{}
			<-l.refused
		}
		var failed int
		var firstErr error
		for i, req := range l.batch {
			err := errs[i]
			if err != nil {
				if failed == 0 {
					firstErr = err
				}
				failed++
			}
			if !stalled { // else refuse answered already
				req.outcome.published(req.ref, wrapUnavailable(req.room, err))
			}
		}
		p.stats.messagesPublished.Add(uint64(len(l.batch) - failed))
		if failed > 0 {
			p.stats.redisErrors.Add(uint64(failed))
			p.log.Warn("publish failed; senders told", "messages", failed, "err", firstErr)
			if cc, ok := p.redis.(*redis.ClusterClient); ok {
				// go-redis looks again at the cluster only on a MOVED reply
				// or once a minute: a master that failed over would be
				// dialled in vain until then.
				cc.ReloadState(ctx)
			}
		}
		clear(l.batch)
		l.batch = l.batch[:0]
	}
}

// refuse runs on the stall timer's goroutine while drain waits for Redis.
// It answers the batch in flight "unavailable" (it may still reach Redis,
// late: "unavailable" after a timeout means "not confirmed"), then holds
// what queues until the pipeline returns, refusing unsent each message
// whose deadline comes first, and any beyond one batch.
func (l *lane) refuse() {
	defer func() { l.refused <- struct{}{} }()
	p := l.p
	p.log.Warn("Redis did not answer a publish in time; refusing messages until it does", "messages_in_flight", len(l.batch))
	for _, req := range l.batch {
		req.outcome.published(req.ref, wrapUnavailable(req.room, errStalled))
	}
	due := time.NewTimer(time.Hour)
	defer due.Stop()
	for {
		now := time.Now()
		for len(l.held) > 0 && !l.held[0].deadline.After(now) {
			l.refuseOne(l.held[0])
			l.held = l.held[1:]
		}
		if len(l.held) > 0 {
			due.Reset(l.held[0].deadline.Sub(now))
		}
		select {
		case req := <-l.queue:
			if len(l.held) < maxPublishBatch {
				l.held = append(l.held, req)
			} else {
				l.refuseOne(req)
			}
		case <-due.C:
		case <-l.unstuck:
			return
		}
	}
}

func (l *lane) refuseOne(req *publishRequest) {
	l.p.stats.redisErrors.Add(1)
	req.outcome.published(req.ref, wrapUnavailable(req.room, errStalled))
}

func wrapUnavailable(room string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: publish to %s: %v", ErrUnavailable, room, err)
}

// pipeline runs the publish script for every message of batch in one
// pipeline and returns each message's error.
func (p *publisher) pipeline(ctx context.Context, batch []*publishRequest) []error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	// EVAL with the source, not EVALSHA: a Redis that lost its script cache
	// (restart, failover, SCRIPT FLUSH) would answer NOSCRIPT to some
	// messages of a batch and not to later ones once another connection
	// loaded the script, and sending the failed ones again would reorder a
	// sender's messages. Redis finds the cached script by hashing these few
	// bytes.
	cmds, _ := p.redis.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for _, r := range batch {
			pl.Eval(ctx, publishScript, []string{p.keys.roomKey(r.room), p.keys.histKey(r.room)}, p.ttl, p.keys.channel(r.room), r.frame, p.history, p.publishCmd)
		}
		return nil
	})
	errs := make([]error, len(batch))
	for i, cmd := range cmds {
		errs[i] = cmd.Err()
	}
	return errs
}
