// Package redistest runs a real redis-server for tests, on a free loopback
// port, so that tests can kill and restart it: what miniredis cannot show
// (reconnects, timing, faults).
//
// It is test infrastructure: only _test.go files import it, so importers of
// the chat package never compile it.
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	readyTimeout = 10 * time.Second // how long Start and Restart wait for PING
	logTail      = 2048             // bytes of the server log shown in failures
)

// Server is a redis-server child process owned by one test.
type Server struct {
	Addr string // 127.0.0.1:port, unchanged across Kill/Restart

	bin     string
	dir     string
	logPath string
	args    []string // extra arguments given to Start

	mu    sync.Mutex
	cmd   *exec.Cmd     // current process, nil when killed
	done  chan struct{} // closed when cmd has been waited for
	admin *redis.Client // the package's own client for Addr, made on first use
}

// skipped counts the tests Start and StartCluster skipped, for ReportSkips.
var skipped atomic.Int64

// ReportSkips prints one line if Start or StartCluster skipped tests for
// want of redis-server or redis-cli, so that a plain "ok" does not hide
// them. Call it from TestMain after m.Run. go test shows a passing
// package's output only with -v, so the line goes to the terminal
// (/dev/tty) when there is one, and to standard output otherwise.
func ReportSkips() {
	if skipped.Load() == 0 {
		return
	}
	var w io.Writer = os.Stdout
	if tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0); err == nil {
		defer tty.Close()
		w = tty
	}
	reportSkips(w, skipped.Load())
}

func reportSkips(w io.Writer, n int64) {
	fmt.Fprintf(w, "%s: %d tests against a real Redis or Redis Cluster were SKIPPED: redis-server or redis-cli is not in PATH; install them (apt-get install redis-server) to run them, or set CHAT_REQUIRE_REDIS=1 to make that a failure (CHAT_REQUIRE_CLUSTER=1 for the cluster tests only)\n", filepath.Base(os.Args[0]), n)
}

// Start starts `redis-server --port P --bind 127.0.0.1 --save ""
// --appendonly no --dir <t.TempDir()> args...` on a free port and waits (up
// to 10 s) until it answers PING. args are extra server arguments, such as
// "--enable-debug-command", "local" for DEBUG SLEEP. Its output goes to
// redis.log in that directory; the log's tail is shown when starting fails.
// If redis-server is not in PATH the test is skipped, or fails when
// CHAT_REQUIRE_REDIS=1. At t.Cleanup the process is killed by PID and
// waited for.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	bins := requireBinaries(t, []string{"CHAT_REQUIRE_REDIS"},
		"install it (apt-get install redis-server) or set CHAT_REQUIRE_REDIS=1 to make this a failure",
		"redis-server")
	s, err := launch(t, bins[0], freePort, args)
	if err != nil {
		t.Fatalf("redistest.Start: %v", err)
	}
	return s
}

// requireBinaries looks up each named program in PATH and returns their
// paths. If one is missing the test is skipped (and counted for
// ReportSkips) with a message naming it followed by hint, or fails instead
// when any of the environment variables in require is "1".
func requireBinaries(t testing.TB, require []string, hint string, names ...string) []string {
	t.Helper()
	paths := make([]string, len(names))
	for i, name := range names {
		p, err := exec.LookPath(name)
		if err == nil {
			paths[i] = p
			continue
		}
		for _, env := range require {
			if os.Getenv(env) == "1" {
				t.Fatalf("%s=1 but %s not found in PATH: %v", env, name, err)
			}
		}
		skipped.Add(1)
		t.Skipf("%s not found in PATH; %s", name, hint)
	}
	return paths
}

// launch starts a Server running bin with args on a port from pickPort,
// in its own t.TempDir, killed at t.Cleanup. A port can be taken between
// pickPort probing it and the server binding it, so a server that fails
// because an address is in use is tried again on another port, a few times.
func launch(t testing.TB, bin string, pickPort func() (int, error), args []string) (*Server, error) {
	dir := t.TempDir()
	s := &Server{bin: bin, dir: dir, logPath: filepath.Join(dir, "redis.log"), args: args}
	t.Cleanup(s.close)
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := pickPort()
		if err != nil {
			return nil, fmt.Errorf("picking a port: %w", err)
		}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if lastErr = s.start(); lastErr == nil {
			return s, nil
		}
		if !strings.Contains(s.tail(), "in use") {
			break
		}
	}
	return nil, fmt.Errorf("%w\n--- redis.log tail ---\n%s", lastErr, s.tail())
}

// Kill sends SIGKILL to the server and waits for it to exit. Addr stays the
// same; Restart brings the server back on it. Killing twice is harmless.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	s.stop()
}

// Restart starts the server again on the same port (killing it first if it
// still runs) and waits until it answers PING. Data is not kept.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.stop()
	if err := s.start(); err != nil {
		t.Fatalf("redistest: Restart on %s: %v\n--- redis.log tail ---\n%s", s.Addr, err, s.tail())
	}
}

// Client returns a new go-redis client for s.Addr, closed at t.Cleanup.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// start launches the process and waits until it answers PING; on failure
// the process is gone when it returns.
func (s *Server) start() error {
	_, port, _ := net.SplitHostPort(s.Addr)
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child keeps its own descriptor
	fmt.Fprintf(logf, "=== starting redis-server on %s at %s ===\n", s.Addr, time.Now().Format(time.RFC3339Nano))
	args := append([]string{"--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir}, s.args...)
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	deadline := time.Now().Add(readyTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := ping(s.Addr, deadline)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("redis-server on %s did not answer PING within %v: %w", s.Addr, readyTimeout, err)
		}
		select {
		case <-done:
			s.stop()
			return fmt.Errorf("redis-server on %s exited before answering PING (%v)", s.Addr, cmd.ProcessState)
		case <-tick.C:
		}
	}
}

// alive reports whether the server's process runs (it was not killed).
func (s *Server) alive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// adminClient returns the client the package uses for its own commands to
// s (cluster set-up and inspection), so that polling does not pile up
// clients; it is closed at t.Cleanup. Its timeouts are short because it
// also asks nodes that may hang or have just been killed.
func (s *Server) adminClient() *redis.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.admin == nil {
		s.admin = redis.NewClient(&redis.Options{
			Addr:         s.Addr,
			DialTimeout:  time.Second,
			ReadTimeout:  3 * time.Second, // longer than MIGRATE's timeout
			WriteTimeout: time.Second,
			PoolSize:     2,
		})
	}
	return s.admin
}

// close kills the server and closes the package's client for it.
func (s *Server) close() {
	s.stop()
	s.mu.Lock()
	c := s.admin
	s.admin = nil
	s.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}

// stop kills the current process by PID, if any, and waits for it.
func (s *Server) stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd, s.done = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// tail returns the end of the server log.
func (s *Server) tail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(b) > logTail {
		b = b[len(b)-logTail:]
	}
	return string(b)
}

// ping sends one PING to addr and expects +PONG.
func ping(addr string, deadline time.Time) error {
	d := time.Until(deadline)
	if d > time.Second {
		d = time.Second
	}
	if d <= 0 {
		d = time.Millisecond
	}
	conn, err := net.DialTimeout("tcp", addr, d)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(d))
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return errors.New("unexpected PING reply " + strconv.Quote(line))
	}
	return nil
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
