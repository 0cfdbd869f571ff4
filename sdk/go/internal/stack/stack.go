// Package stack runs a real local Sluice stack for the integration tests, as deploy/dev/up
// starts one (a port of sdk/python/tests/stack.py).
//
// A nisshi broker (SQLite storage) and `sluice-gateway --standalone` (gateway and worker, the
// embedded database and vector store) on free loopback ports, on mTLS with a development CA,
// the gateway's certificate and a tenant's client certificate made by sluice-admin; all of it
// in one temporary directory (with a sluice.toml that shortens the Kafka session, so that a
// killed worker's partitions move on in seconds). Every wait is bounded; Close stops both
// processes.
//
// Where things are: SLUICE_CACHE (default ~/.cache/sluice) has the broker (nisshi/bin/nisshi);
// SLUICE_BIN_DIR (default $CARGO_TARGET_DIR/debug, itself by default $SLUICE_CACHE/target)
// has sluice-gateway and sluice-admin; SLUICE_MODEL_DIR (default $SLUICE_CACHE/model) the
// embedding model.
package stack

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Tools are the installed programs and model a stack runs.
type Tools struct {
	Nisshi, Gateway, Admin, ModelDir string
}

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

// FindTools finds the tools, or says why they cannot be used.
func FindTools() (Tools, error) {
	home, _ := os.UserHomeDir()
	cache := env("SLUICE_CACHE", filepath.Join(home, ".cache", "sluice"))
	target := env("CARGO_TARGET_DIR", filepath.Join(cache, "target"))
	bin := env("SLUICE_BIN_DIR", filepath.Join(target, "debug"))
	tools := Tools{
		Nisshi:   filepath.Join(cache, "nisshi", "bin", "nisshi"),
		Gateway:  filepath.Join(bin, "sluice-gateway"),
		Admin:    filepath.Join(bin, "sluice-admin"),
		ModelDir: env("SLUICE_MODEL_DIR", filepath.Join(cache, "model")),
	}
	for _, path := range []string{tools.Nisshi, tools.Gateway, tools.Admin} {
		if info, err := os.Stat(path); err != nil || info.Mode()&0o111 == 0 {
			return tools, fmt.Errorf("%s is missing (deploy/dev/up or cargo build installs it)", path)
		}
	}
	if _, err := os.Stat(filepath.Join(tools.ModelDir, "model.safetensors")); err != nil {
		return tools, fmt.Errorf("no model in %s (deploy/dev/lib.sh install_model)", tools.ModelDir)
	}
	return tools, nil
}

// FreePort is a loopback port free now.
func FreePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func portOpen(port int) bool {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 500*time.Millisecond)
	if err == nil {
		c.Close()
	}
	return err == nil
}

func tail(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(no log)"
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// Stack is a broker and Sluice standalone on mTLS, in Root (a fresh temporary directory).
type Stack struct {
	Tools         Tools
	Root          string
	Tenant        string
	TLS           string // the CA directory, with the tenant's certificate
	data          string
	kafkaPort     int
	grpcPort      int
	healthPort    int
	broker        *exec.Cmd
	brokerDone    chan struct{}
	gateway       *exec.Cmd
	gatewayDone   chan struct{}
	GatewayStarts int
}

// New is a stack, not started, in root.
func New(tools Tools, root, tenant string) *Stack {
	return &Stack{
		Tools: tools, Root: root, Tenant: tenant,
		TLS: filepath.Join(root, "tls"), data: filepath.Join(root, "data"),
		kafkaPort: FreePort(), grpcPort: FreePort(), healthPort: FreePort(),
	}
}

// Target is the gateway's address.
func (s *Stack) Target() string { return fmt.Sprintf("127.0.0.1:%d", s.grpcPort) }

// environ is only what this stack sets: no SLUICE_* configuration of the caller's leaks in.
func (s *Stack) environ(extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SLUICE_") && !strings.HasPrefix(kv, "RUST_LOG=") {
			out = append(out, kv)
		}
	}
	return append(append(out, "SLUICE_MODEL_DIR="+s.Tools.ModelDir, "RUST_LOG=info"), extra...)
}

// Admin runs sluice-admin on the stack's data directory and returns what it printed.
func (s *Stack) Admin(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.Tools.Admin, append([]string{"--data-dir", s.data, "--actor", "sdk/go tests"}, args...)...)
	cmd.Dir, cmd.Env = s.Root, s.environ()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("sluice-admin %s failed (%v):\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// Start makes the certificates and the tenant, and starts the broker and the gateway.
func (s *Stack) Start() error {
	// What deploy/dev/up gives on the command line, plus what the tests of killing a process
	// need: a killed worker holds its partitions until its session times out.
	config := "[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n"
	if err := os.WriteFile(filepath.Join(s.Root, "sluice.toml"), []byte(config), 0o644); err != nil {
		return err
	}
	// deploy/dev/up's steps: CA, server certificate, tenant, client certificate.
	for _, args := range [][]string{
		{"cert", "init-ca", "--out", s.TLS},
		{"cert", "server", "--ca-dir", s.TLS, "--out", s.TLS, "--name", "localhost", "--name", "127.0.0.1"},
		{"tenant", "create", s.Tenant, "--name", "SDK test tenant"},
		{"cert", "client", s.Tenant, "--ca-dir", s.TLS, "--out", s.TLS},
	} {
		if _, err := s.Admin(args...); err != nil {
			return err
		}
	}
	if err := s.startBroker(); err != nil {
		return err
	}
	return s.StartGateway(180 * time.Second)
}

func (s *Stack) logFile(name string) (*os.File, error) {
	return os.OpenFile(filepath.Join(s.Root, name), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
}

func (s *Stack) startBroker() error {
	url := fmt.Sprintf("tcp://127.0.0.1:%d", s.kafkaPort)
	log, err := s.logFile("broker.log")
	if err != nil {
		return err
	}
	defer log.Close()
	// nisshi resolves sqlite:// paths against its working directory.
	s.broker = exec.Command(s.Tools.Nisshi, "broker", "--listener-url", url, "--advertised-listener-url", url,
		"--storage-engine", "sqlite://broker.db", "--group-initial-rebalance-delay", "100ms")
	s.broker.Dir, s.broker.Env, s.broker.Stdout, s.broker.Stderr = s.Root, s.environ(), log, log
	if err := s.broker.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { _ = s.broker.Wait(); close(exited) }()
	s.brokerDone = exited
	deadline := time.Now().Add(30 * time.Second)
	for !portOpen(s.kafkaPort) {
		select {
		case <-exited:
			return fmt.Errorf("the broker exited:\n%s", tail(filepath.Join(s.Root, "broker.log"), 40))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the broker did not start:\n%s", tail(filepath.Join(s.Root, "broker.log"), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// StartGateway starts sluice-gateway --standalone and waits until it is healthy.
func (s *Stack) StartGateway(timeout time.Duration) error {
	log, err := s.logFile("sluice.log")
	if err != nil {
		return err
	}
	defer log.Close()
	s.GatewayStarts++
	cmd := exec.Command(s.Tools.Gateway, "--standalone", "--config", filepath.Join(s.Root, "sluice.toml"),
		"--listen", s.Target(), "--health-listen", fmt.Sprintf("127.0.0.1:%d", s.healthPort),
		"--bootstrap-servers", fmt.Sprintf("127.0.0.1:%d", s.kafkaPort), "--data-dir", s.data)
	cmd.Dir, cmd.Stdout, cmd.Stderr = s.Root, log, log
	cmd.Env = s.environ(
		"SLUICE_TLS__CERT="+filepath.Join(s.TLS, "server.pem"),
		"SLUICE_TLS__KEY="+filepath.Join(s.TLS, "server-key.pem"),
		"SLUICE_TLS__CLIENT_CA="+filepath.Join(s.TLS, "ca.pem"),
	)
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.gateway, s.gatewayDone = cmd, done
	deadline := time.Now().Add(timeout)
	for !s.healthy() {
		select {
		case <-done:
			return fmt.Errorf("sluice-gateway exited (%v):\n%s", cmd.ProcessState, s.LogTail(40))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sluice-gateway not healthy within %v:\n%s", timeout, s.LogTail(40))
		}
		time.Sleep(250 * time.Millisecond)
	}
	return nil
}

func (s *Stack) healthy() bool {
	client := http.Client{Timeout: 2 * time.Second}
	response, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", s.healthPort))
	if err != nil {
		return false
	}
	response.Body.Close()
	return response.StatusCode == http.StatusOK
}

// StopGateway stops the gateway with SIGTERM (graceful: in-flight calls finish, streams end
// UNAVAILABLE), then SIGKILL after timeout.
func (s *Stack) StopGateway(timeout time.Duration) {
	stop(s.gateway, s.gatewayDone, timeout)
	s.gateway = nil
}

// KillGateway kills the gateway (SIGKILL) and waits for it to exit.
func (s *Stack) KillGateway() {
	if s.gateway != nil {
		_ = s.gateway.Process.Kill()
		<-s.gatewayDone
		s.gateway = nil
	}
}

// LogTail is the end of the gateway's log.
func (s *Stack) LogTail(lines int) string { return tail(filepath.Join(s.Root, "sluice.log"), lines) }

// Close stops the gateway (first, so that it finishes its transactions while the broker is
// up), then the broker.
func (s *Stack) Close() {
	s.StopGateway(30 * time.Second)
	stop(s.broker, s.brokerDone, 10*time.Second)
	s.broker = nil
}

func stop(cmd *exec.Cmd, done <-chan struct{}, timeout time.Duration) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
	}
}
