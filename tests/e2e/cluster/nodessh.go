package cluster

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// The storage suite's disruptive tests reach a node over SSH, at the
// node's address, port 22: they stop, start and restart its kubelet with
// `systemctl <op> kubelet` (`sudo` first when the node has it), ask
// `systemctl show kubelet --property ActiveState --value`, and look at the
// node's mounts and its kubelet directory (/var/lib/kubelet) with mount,
// ls, find and grep. StartNodeSSH gives each real node with a network of
// its own such a shell: an SSH server on its address, key authentication
// only, with the key written for the suite (KUBE_SSH_KEY_PATH). A systemctl
// command for the kubelet acts on that node's kubelet process; any other
// command runs with bash (whose "command not found" the suite looks for to
// tell whether the node has sudo) in the node's own mount and network
// namespaces (see nodens.go), where /var/lib/kubelet is its kubelet's.

// StartNodeSSH starts the real nodes' SSH servers and writes the private
// key they accept to keyPath. Call it after the real nodes are added.
func (cp *ControlPlane) StartNodeSSH(keyPath string) error {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	block, err := ssh.MarshalPrivateKey(priv, "e2e node shell")
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(block), 0o600); err != nil {
		return err
	}
	client, err := ssh.NewPublicKey(pub)
	if err != nil {
		return err
	}
	_, hostPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	hostKey, err := ssh.NewSignerFromKey(hostPriv)
	if err != nil {
		return err
	}
	for _, n := range cp.reals {
		if n.real.net == nil {
			return fmt.Errorf("%s has no network of its own (Config.NodeNetwork)", n.Name)
		}
		cfg := &ssh.ServerConfig{
			PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
				if string(k.Marshal()) != string(client.Marshal()) {
					return nil, errors.New("unknown key")
				}
				return nil, nil
			},
		}
		cfg.AddHostKey(hostKey)
		l, err := listenIn(n.real.net.path(), net.JoinHostPort(n.real.net.ip.String(), "22"))
		if err != nil {
			return fmt.Errorf("%s: SSH listener: %w", n.Name, err)
		}
		s := &nodeShell{cp: cp, n: n, cfg: cfg, l: l}
		cp.shells = append(cp.shells, s)
		go s.serve()
	}
	return nil
}

// listenIn listens on addr inside the network namespace at nsPath. The
// calling goroutine's thread enters the namespace for the socket call only;
// a thread that cannot get back is never reused (the goroutine ends locked
// to it).
func listenIn(nsPath, addr string) (net.Listener, error) {
	type result struct {
		l   net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		target, err := os.Open(nsPath)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("setns %s: %w", nsPath, err)}
			return
		}
		l, err := net.Listen("tcp", addr)
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{l, err}
	}()
	r := <-ch
	return r.l, r.err
}

// nodeShell is one node's SSH server.
type nodeShell struct {
	cp  *ControlPlane
	n   *Node
	cfg *ssh.ServerConfig
	l   net.Listener
	mu  sync.Mutex // one kubelet operation at a time
	wg  sync.WaitGroup
}

func (s *nodeShell) serve() {
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(c)
		}()
	}
}

// stop closes the listener and waits for the sessions in progress, at
// most a minute.
func (s *nodeShell) stop() {
	_ = s.l.Close()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
	}
}

func (s *nodeShell) handle(c net.Conn) {
	defer c.Close()
	conn, chans, reqs, err := ssh.NewServerConn(c, s.cfg)
	if err != nil {
		return
	}
	defer conn.Close()
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, requests, err := nc.Accept()
		if err != nil {
			return
		}
		go s.session(ch, requests)
	}
}

// session answers one exec request and closes the channel with the
// command's exit status; anything but exec (a shell, a terminal) is
// refused.
func (s *nodeShell) session(ch ssh.Channel, requests <-chan *ssh.Request) {
	defer ch.Close()
	for req := range requests {
		if req.Type != "exec" {
			_ = req.Reply(false, nil)
			continue
		}
		var payload struct{ Command string }
		if err := ssh.Unmarshal(req.Payload, &payload); err != nil {
			_ = req.Reply(false, nil)
			return
		}
		_ = req.Reply(true, nil)
		code := s.run(payload.Command, ch, ch.Stderr())
		status := make([]byte, 4)
		binary.BigEndian.PutUint32(status, uint32(code))
		_, _ = ch.SendRequest("exit-status", false, status)
		return
	}
}

// kubeletCommand is the suite's systemctl line for the kubelet.
var kubeletCommand = regexp.MustCompile(`^(?:sudo )?systemctl (stop|start|restart|show) kubelet(?: --property ActiveState --value)?$`)

// run runs one command of the suite on the node and returns its exit code.
func (s *nodeShell) run(command string, stdout, stderr io.Writer) int {
	if m := kubeletCommand.FindStringSubmatch(strings.TrimSpace(command)); m != nil {
		if err := s.kubelet(m[1], stdout); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin, args := s.n.real.inNode("/bin/bash", "-c", command)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		fmt.Fprintln(stderr, err)
		return 255
	}
	return 0
}

// kubelet stops, starts or restarts the node's kubelet process, or says
// whether it runs, as systemctl would for a kubelet unit.
func (s *nodeShell) kubelet(op string, stdout io.Writer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rn := s.n.real
	running := rn.kubelet != nil && !rn.kubelet.exited()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	switch op {
	case "show":
		state := "inactive"
		if running {
			state = "active"
		}
		_, err := fmt.Fprintln(stdout, state)
		return err
	case "stop":
		if running {
			rn.kubelet.stop(30 * time.Second)
		}
		return nil
	case "start":
		if running {
			return nil
		}
		return s.cp.runKubelet(ctx, s.n)
	default: // restart
		if running {
			rn.kubelet.stop(30 * time.Second)
		}
		return s.cp.runKubelet(ctx, s.n)
	}
}
