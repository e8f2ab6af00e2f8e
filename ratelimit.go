package chat

import "time"

// Rate limits. Every frame a connection sends takes a token of its rate
// (WithRateLimit); every join that adds it to a room also takes one of its
// join budget, because a join can make Redis hold a key.

// rateLimiter is a token bucket: rate frames per second, bursts of burst.
// It also tells a client that slows down when refused from one that floods.
type rateLimiter struct {
	rate, burst, tokens float64
	last                time.Time
	refused             int       // frames refused since refusedSince
	refusedSince        time.Time // start of the one-second window refused counts in
}

func newRateLimiter(rate float64, burst int) rateLimiter {
	return rateLimiter{rate: rate, burst: float64(burst), tokens: float64(burst)}
}

// take spends a token on one frame. Without one the frame is refused (ok
// false), and flood reports that more than burst frames were refused within
// a second: the client keeps going at full speed past the limit.
func (l *rateLimiter) take(now time.Time) (ok, flood bool) {
	if l.allow(now) {
		return true, false
	}
	if now.Sub(l.refusedSince) >= time.Second {
		l.refused, l.refusedSince = 0, now
	}
	l.refused++
	return false, l.refused > int(l.burst)
}

func (l *rateLimiter) allow(now time.Time) bool {
	if l.rate <= 0 {
		return true
	}
	if !l.last.IsZero() {
		l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	}
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

// joinsPerMinute is how fast a connection may join rooms once it has used
// its first WithMaxRooms joins. Each join can make Redis hold a room key
// for the room TTL, so this bounds what one connection makes Redis hold:
// at most maxRooms + joinsPerMinute × TTL-in-minutes keys (92 with the
// defaults), however it churns through room names.
const joinsPerMinute = 12

// newJoinLimiter is a connection's join budget: bursts of maxRooms, then
// joinsPerMinute; unlimited when the rate limit is off.
func newJoinLimiter(cfg *config) rateLimiter {
	if cfg.ratePerSec <= 0 {
		return newRateLimiter(0, 1)
	}
	return newRateLimiter(joinsPerMinute/60.0, cfg.maxRooms)
}
