package chat

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Presence: who is in a room, on any instance. Each room has a hash
// chat:presence:{room} with a field per user and instance ("user\x00id")
// whose value is when the entry expires (Redis time, ms). An instance adds
// its field when a user's first local connection joins the room, removes
// it when the last one leaves, and refreshes its fields every third of the
// presence TTL; an instance that dies stops refreshing, and whichever
// instance refreshes the room next sweeps the dead fields out. Scripts
// keyed on the hash (in the room's slot) decide atomically whether a user
// appeared or went on all instances together, and announce it on the
// room's channel, in order with its messages. Nothing happens per message.

// presenceNowLua reads Redis's clock in ms: every instance's expiries are
// on one clock.
const presenceNowLua = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function present(user, except)
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local f = all[i]
    local sep = string.find(f, '\0', 1, true)
    if sep and f ~= except and string.sub(f, 1, sep - 1) == user and tonumber(all[i + 1]) > now then
      return true
    end
  end
  return false
end
`

// presenceJoinScript adds this instance's field for a user and announces
// the user if no other live field has it. ARGV: user, instance, TTL (ms),
// channel, user_joined frame, publish command.
const presenceJoinScript = presenceNowLua + `local f = ARGV[1] .. '\0' .. ARGV[2]
local before = present(ARGV[1], f)
redis.call('HSET', KEYS[1], f, now + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
if not before then redis.call(ARGV[6], ARGV[4], ARGV[5]) end
return 1`

// presenceLeaveScript removes this instance's field for a user and
// announces the user gone if no other live field has it. ARGV: user,
// instance, channel, user_left frame, publish command.
const presenceLeaveScript = presenceNowLua + `local f = ARGV[1] .. '\0' .. ARGV[2]
if redis.call('HDEL', KEYS[1], f) == 1 and not present(ARGV[1], f) then
  redis.call(ARGV[5], ARGV[3], ARGV[4])
end
return 1`

// presenceRefreshScript renews this instance's fields (ARGV[3..]: users),
// removes every expired field, and returns the users that thereby left
// the room altogether, for the caller to announce. ARGV: instance, TTL (ms).
const presenceRefreshScript = presenceNowLua + `for i = 3, #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i] .. '\0' .. ARGV[1], now + tonumber(ARGV[2]))
end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
local gone = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) <= now then
    redis.call('HDEL', KEYS[1], all[i])
    local sep = string.find(all[i], '\0', 1, true)
    if sep then gone[#gone + 1] = string.sub(all[i], 1, sep - 1) end
  end
end
local left = {}
for _, user in ipairs(gone) do
  if not present(user, '') then left[#left + 1] = user end
end
return left`

// presenceListScript returns the users with a live field (with repeats).
const presenceListScript = presenceNowLua + `local users = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local sep = string.find(all[i], '\0', 1, true)
  if sep and tonumber(all[i + 1]) > now then users[#users + 1] = string.sub(all[i], 1, sep - 1) end
end
return users`

// presenceOp is one change of a user's presence in a room here.
type presenceOp struct {
	room, user string
	joined     bool
}

// presence keeps this instance's side of the rooms' presence hashes. Its
// one goroutine applies joins and leaves in the order they happened (a
// quick join and leave must not land in Redis the other way round) and
// refreshes the instance's fields.
type presence struct {
	redis    redis.UniversalClient
	mode     pubsubMode
	keys     keyspace
	instance string
	ttl      time.Duration
	timeout  time.Duration
	log      *slog.Logger
	local    func() map[string][]string // room → its users here (the hub)

	mu      sync.Mutex
	pending []presenceOp
	wake    chan struct{}
}

func (p *presence) enqueue(op presenceOp) {
	p.mu.Lock()
	p.pending = append(p.pending, op)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// lifetime is how long a field lives unrefreshed: two thirds of the TTL.
// Refreshed every third, a live instance's fields never lapse, and a dead
// one's are swept by the next refresh of another instance after they
// lapse: its users are gone within the TTL.
func (p *presence) lifetime() time.Duration { return p.ttl * 2 / 3 }

// run applies queued changes and refreshes every third of the TTL until
// ctx ends; then it applies the last changes (Shutdown's leaves).
func (p *presence) run(ctx context.Context) {
	t := time.NewTicker(p.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			// Shutdown: the clients are gone, their leaves queued.
			p.apply(ctx)
			return
		case <-p.wake:
			p.apply(ctx)
		case <-t.C:
			p.apply(ctx)
			p.refresh(ctx)
		}
	}
}

// apply sends the queued changes, bounded by the timeout alone: ctx's end
// does not cut it short, because Shutdown ends the loop's ctx just after
// queuing its clients' leaves, which must still go out.
func (p *presence) apply(ctx context.Context) {
	p.mu.Lock()
	ops := p.pending
	p.pending = nil
	p.mu.Unlock()
	if len(ops) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.timeout)
	defer cancel()
	ttl := p.lifetime().Milliseconds()
	_, err := p.redis.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for _, op := range ops {
			keys := []string{p.keys.presenceKey(op.room)}
			if op.joined {
				pl.Eval(ctx, presenceJoinScript, keys, op.user, p.instance, ttl, p.keys.channel(op.room), userFrame("user_joined", op.room, op.user), p.mode.publishCommand())
			} else {
				pl.Eval(ctx, presenceLeaveScript, keys, op.user, p.instance, p.keys.channel(op.room), userFrame("user_left", op.room, op.user), p.mode.publishCommand())
			}
		}
		return nil
	})
	if err != nil {
		p.log.Warn("cannot update presence; the next refresh repairs it", "changes", len(ops), "err", err)
	}
}

// refresh renews this instance's fields in every room it has users in,
// sweeps the fields of instances that stopped refreshing, and announces
// the users that left with them.
func (p *presence) refresh(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	rooms := p.local()
	ttl := p.lifetime().Milliseconds()
	cmds := make(map[string]*redis.Cmd, len(rooms))
	_, err := p.redis.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for room, users := range rooms {
			args := []any{p.instance, ttl}
			for _, u := range users {
				args = append(args, u)
			}
			cmds[room] = pl.Eval(ctx, presenceRefreshScript, []string{p.keys.presenceKey(room)}, args...)
		}
		return nil
	})
	if err != nil {
		p.log.Warn("cannot refresh presence", "rooms", len(rooms), "err", err)
		return
	}
	for room, cmd := range cmds {
		left, _ := cmd.StringSlice()
		for _, user := range left {
			if err := p.mode.publish(ctx, p.redis, p.keys.channel(room), userFrame("user_left", room, user)); err != nil {
				p.log.Warn("cannot announce a user gone with its instance", "room", room, "err", err)
			}
		}
	}
}

// list returns the users present in room on any instance, each once,
// sorted.
func (p *presence) list(ctx context.Context, room string) ([]string, error) {
	users, err := p.redis.Eval(ctx, presenceListScript, []string{p.keys.presenceKey(room)}).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("%w: presence of %s: %v", ErrUnavailable, room, err)
	}
	sort.Strings(users)
	out := users[:0]
	for i, u := range users {
		if i == 0 || u != users[i-1] {
			out = append(out, u)
		}
	}
	return out, nil
}

// Presence returns the users with a connection in room on any instance,
// each once, sorted. An instance that died without a goodbye takes its
// users with it within the presence TTL (60 s).
func (h *Handler) Presence(ctx context.Context, room string) ([]string, error) {
	if !validRoom(room) {
		return nil, ErrInvalidRoom
	}
	return h.presence.list(ctx, room)
}

// answerPresence reads who is in room and tells c, within the publish
// timeout (readBounded).
func (h *Handler) answerPresence(c *client, room, ref string) {
	var users []string
	h.readBounded(func(ctx context.Context) (err error) {
		users, err = h.presence.list(ctx, room)
		return err
	}, func() { c.send(presenceFrame(room, users, ref)) }, func(err error) {
		c.sendError(codeUnavailable, "who is in "+room+": "+err.Error(), ref)
	})
}

// userFrame is a user_joined or user_left frame.
func userFrame(typ, room, user string) []byte {
	b := append(make([]byte, 0, 48+len(room)+len(user)), `{"type":"`...)
	b = append(b, typ...)
	b = append(b, `","room":`...)
	b = appendJSONString(b, room)
	b = append(b, `,"user":`...)
	b = appendJSONString(b, user)
	return append(b, '}')
}

// presenceFrame answers a presence request.
func presenceFrame(room string, users []string, ref string) []byte {
	b := append(make([]byte, 0, 64+len(room)+16*len(users)), `{"type":"presence","room":`...)
	b = appendJSONString(b, room)
	b = append(b, `,"users":[`...)
	for i, u := range users {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, u)
	}
	b = append(b, ']')
	if ref != "" {
		b = append(b, `,"ref":`...)
		b = appendJSONString(b, ref)
	}
	return append(b, '}')
}
