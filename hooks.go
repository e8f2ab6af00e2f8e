package chat

import (
	"context"
	"errors"
)

// The application's hooks: WithAuthorize decides where a user may go,
// WithOnMessage what a message may say. Both run on the reader goroutine of
// the connection concerned, so a slow hook delays that client alone; their
// context carries the upgrade request's values and ends with the
// connection. A hook that panics is recovered and logged, and its request
// refused.

// errHookFailed is what a client hears when a hook panicked: the panic's
// details are for the log, not for the client.
var errHookFailed = errors.New("refused")

// authorize asks the authorize hook whether c's user may join room.
func (c *client) authorize(ctx context.Context, room string) error {
	if c.h.cfg.authorize == nil {
		return nil
	}
	return c.callHook("authorize", func() error { return c.h.cfg.authorize(ctx, c.user, room) })
}

// moderate runs the message hook on m, which it may change.
func (c *client) moderate(ctx context.Context, m *Message) error {
	if c.h.cfg.onMessage == nil {
		return nil
	}
	return c.callHook("message", func() error { return c.h.cfg.onMessage(ctx, m) })
}

func (c *client) callHook(name string, hook func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			c.h.log.Error("hook panicked; request refused", "hook", name, "user", c.user, "panic", p)
			err = errHookFailed
		}
	}()
	return hook()
}
