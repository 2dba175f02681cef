package herald_test

// Real processes for the tests: `herald serve` nodes on free loopback
// ports with temp configs, and redis-server for the Redis-backed ones. The
// binary is $HERALD_BIN, else ../../target/debug/herald.

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	herald "github.com/herald/herald-go"
)

const (
	secret     = "sdk-test-secret-0123456789abcdef"
	issuer     = "herald-sdk-tests"
	audience   = "herald"
	adminKey   = "sdk-admin-key-0123456789"
	publishKey = "sdk-publish-key-0123456789"
)

var baseTOML = fmt.Sprintf(`
[auth]
hs256_secret = %q
issuer = %q
audience = %q
api_keys = [
  { key = %q, scopes = ["admin"] },
  { key = %q, scopes = ["publish"] },
]

[namespaces.sdk]
join = "any"
send = "any"
presence = true
history_size = 1000
history_ttl = "10m"
`, secret, issuer, audience, adminKey, publishKey)

// nodeURL is the shared memory-broker node, started by TestMain.
var nodeURL string

func TestMain(m *testing.M) {
	n, err := newNode("")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	nodeURL = n.url
	code := m.Run()
	n.close()
	os.Exit(code)
}

func heraldBin() string {
	if b := os.Getenv("HERALD_BIN"); b != "" {
		return b
	}
	return filepath.Join("..", "..", "target", "debug", "herald")
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitFor polls check until it holds or timeout passes.
func waitFor(timeout time.Duration, check func() bool) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if check() {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// node is one `herald serve` process; restart keeps its port and config.
type node struct {
	dir, url string
	port     int
	cmd      *exec.Cmd
	exited   chan struct{}
}

func newNode(extra string) (*node, error) {
	dir, err := os.MkdirTemp("", "herald-sdk-go-")
	if err != nil {
		return nil, err
	}
	port := freePort()
	cfg := fmt.Sprintf("[server]\nlisten = \"127.0.0.1:%d\"\nnode_id = \"sdk-go-%d\"\n", port, port) + baseTOML + extra
	if err := os.WriteFile(filepath.Join(dir, "herald.toml"), []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	n := &node{dir: dir, port: port, url: fmt.Sprintf("http://127.0.0.1:%d", port)}
	return n, n.start()
}

func (n *node) start() error {
	log, err := os.OpenFile(filepath.Join(n.dir, "herald.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(heraldBin(), "serve", "--config", filepath.Join(n.dir, "herald.toml"))
	cmd.Stdout, cmd.Stderr = log, log
	// The node reads every HERALD_* variable as config (HERALD_BIN too).
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HERALD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w (run `cargo build -p herald` or set HERALD_BIN)", heraldBin(), err)
	}
	exited := make(chan struct{})
	n.cmd, n.exited = cmd, exited
	go func() { _, _ = cmd.Process.Wait(); close(exited) }()
	ready := waitFor(30*time.Second, func() bool {
		select {
		case <-exited:
			return true
		default:
		}
		resp, err := http.Get(n.url + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	select {
	case <-exited:
		logText, _ := os.ReadFile(filepath.Join(n.dir, "herald.log"))
		return fmt.Errorf("herald exited: %s", logText)
	default:
	}
	if !ready {
		return fmt.Errorf("herald on port %d not ready in 30s", n.port)
	}
	return nil
}

// kill sends SIGKILL: in-flight requests see their connection break.
func (n *node) kill() {
	if n.cmd != nil && n.cmd.Process != nil {
		_ = n.cmd.Process.Kill()
		<-n.exited
	}
}

func (n *node) restart(t *testing.T) {
	n.kill()
	if err := n.start(); err != nil {
		t.Error(err)
	}
}

func (n *node) close() {
	n.kill()
	_ = os.RemoveAll(n.dir)
}

// redisServer is one redis-server on a free loopback port, no persistence.
type redisServer struct {
	url, addr string
	cmd       *exec.Cmd
}

func newRedis(t *testing.T) *redisServer {
	t.Helper()
	port := freePort()
	cmd := exec.Command("redis-server", "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		t.Fatalf("redis-server: %v (apt-get install -y redis-server)", err)
	}
	r := &redisServer{url: fmt.Sprintf("redis://127.0.0.1:%d", port), addr: fmt.Sprintf("127.0.0.1:%d", port), cmd: cmd}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if !waitFor(10*time.Second, func() bool { return r.raw("PING") == "+PONG" }) {
		t.Fatal("redis-server did not answer PING")
	}
	return r
}

// raw sends one inline command and returns the first reply line.
func (r *redisServer) raw(cmd string) string {
	c, err := net.DialTimeout("tcp", r.addr, time.Second)
	if err != nil {
		return ""
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(cmd + "\r\n")); err != nil {
		return ""
	}
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line)
}

func (r *redisServer) pause()  { _ = r.cmd.Process.Signal(syscall.SIGSTOP) }
func (r *redisServer) resume() { _ = r.cmd.Process.Signal(syscall.SIGCONT) }

// redisNode starts a Redis-broker node on r with its own prefix and a
// short command timeout, so a paused Redis turns into 503 quickly.
func redisNode(t *testing.T, r *redisServer) (*node, string) {
	t.Helper()
	prefix := fmt.Sprintf("sdkgo%d", freePort())
	n, err := newNode(fmt.Sprintf("\n[broker]\nkind = \"redis\"\nredis_url = %q\nprefix = %q\ncommand_timeout = \"300ms\"\n", r.url, prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.close)
	return n, prefix
}

func mustClient(t *testing.T, url, key string, opts ...herald.Option) *herald.Client {
	t.Helper()
	c, err := herald.NewClient(url, key, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

var roomSeq int

func freshRoom() string {
	roomSeq++
	return fmt.Sprintf("sdk:go-%d-%d", time.Now().UnixNano(), roomSeq)
}
