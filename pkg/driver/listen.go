package driver

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// ErrEndpointInUse is wrapped by the error of Listen and OpenEndpoint when
// another live process serves (or may serve) the endpoint's unix socket.
var ErrEndpointInUse = errors.New("served by another live process")

// liveDialTimeout bounds the connection attempt that tells a live socket
// from a stale one.
const liveDialTimeout = 2 * time.Second

// Endpoint is a listening CSI endpoint. Closing it stops listening and, for
// a unix socket, removes the socket file only while the path still holds the
// socket this Endpoint created: never one another process made since.
type Endpoint struct {
	net.Listener
	path    string      // socket path; "" for tcp
	created os.FileInfo // the socket file as created
	once    sync.Once
}

// OpenEndpoint opens the endpoint (unix:///path or unix:/path; tcp://host:port
// for tests). A unix socket file that another live process answers on is
// refused with ErrEndpointInUse; only a socket nobody answers on is stale
// and replaced, and a file that is not a socket is never replaced. The
// socket is made 0600 in a 0750 directory.
func OpenEndpoint(endpoint string) (*Endpoint, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", endpoint, err)
	}
	switch u.Scheme {
	case "unix":
		path := u.Path
		if path == "" {
			path = u.Opaque
		}
		if path == "" {
			return nil, fmt.Errorf("endpoint %q has no socket path", endpoint)
		}
		return listenUnix(path)
	case "tcp":
		l, err := net.Listen("tcp", u.Host)
		if err != nil {
			return nil, err
		}
		return &Endpoint{Listener: l}, nil
	}
	return nil, fmt.Errorf("endpoint %q: scheme must be unix or tcp", endpoint)
}

// Listen opens the endpoint as OpenEndpoint does. Closing the listener it
// returns never removes the socket file; a later Listen replaces it once
// nobody answers on it.
func Listen(endpoint string) (net.Listener, error) {
	ep, err := OpenEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	return ep.Listener, nil
}

// Close stops listening and removes the socket file if it is still the one
// this endpoint created. Only the first call has an effect.
func (e *Endpoint) Close() error {
	err := e.Listener.Close()
	e.once.Do(e.removeOwnSocket)
	return err
}

// removeOwnSocket removes the endpoint's socket file unless the path is gone
// or now names another file.
func (e *Endpoint) removeOwnSocket() {
	if e.path == "" {
		return
	}
	fi, err := os.Lstat(e.path)
	if err != nil {
		return
	}
	if !os.SameFile(fi, e.created) {
		klog.InfoS("Socket was replaced by another process; leaving it", "path", e.path)
		return
	}
	if err := os.Remove(e.path); err != nil && !os.IsNotExist(err) {
		klog.ErrorS(err, "Removing socket", "path", e.path)
	}
}

// listenUnix listens on a new socket at path after removing a stale one.
func listenUnix(path string) (*Endpoint, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	// The listener's own unlink on close removes whatever the path names
	// then; Endpoint.Close removes only our socket.
	l.SetUnlinkOnClose(false)
	created, err := os.Lstat(path)
	if err == nil {
		err = os.Chmod(path, 0o600)
	}
	if err != nil {
		l.Close()
		return nil, err
	}
	return &Endpoint{Listener: l, path: path, created: created}, nil
}

// removeStaleSocket removes the socket file at path if nobody answers on
// it. A missing path is fine; a file that is not a socket, and a socket a
// live process serves, are refused.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	// A mistyped endpoint must not delete some other file.
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("endpoint %s exists and is not a socket; not replacing it", path)
	}
	if err := probeSocket(path); err != nil {
		return err
	}
	klog.InfoS("Removing stale socket", "path", path)
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	return nil
}

// probeSocket connects to the socket at path. It returns nil only when the
// socket is stale: nobody listens on it (or it vanished). A connection that
// succeeds, or fails in any other way, means another process may own it.
func probeSocket(path string) error {
	c, err := net.DialTimeout("unix", path, liveDialTimeout)
	switch {
	case err == nil:
		c.Close()
		return fmt.Errorf("endpoint %s is %w; stop that driver or choose another --endpoint", path, ErrEndpointInUse)
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT):
		return nil
	}
	return fmt.Errorf("endpoint %s may be %w (connecting to it failed: %v); not replacing it", path, ErrEndpointInUse, err)
}
