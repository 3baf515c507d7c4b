package driver

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// answers reports whether a connection to the socket at path reaches l:
// it dials, and l must accept within 5 s.
func answers(t *testing.T, l net.Listener, path string) bool {
	t.Helper()
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		a, err := l.Accept()
		if err == nil {
			accepted <- a
		}
	}()
	select {
	case a := <-accepted:
		a.Close()
		return true
	case <-time.After(5 * time.Second):
		return false
	}
}

// TestListenRefusesLiveSocket: a socket that another listener serves is
// refused with ErrEndpointInUse naming it, and left as it was: the first
// listener still owns the path and still gets the connections.
func TestListenRefusesLiveSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "csi.sock")
	first, err := OpenEndpoint("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	before, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	for _, open := range []func() (net.Listener, error){
		func() (net.Listener, error) { return Listen("unix://" + sock) },
		func() (net.Listener, error) { return OpenEndpoint("unix://" + sock) },
	} {
		second, err := open()
		if err == nil {
			second.Close()
			t.Fatal("a second listener took over a live socket")
		}
		if !errors.Is(err, ErrEndpointInUse) {
			t.Errorf("error %v does not wrap ErrEndpointInUse", err)
		}
		if want := "endpoint " + sock + " is served by another live process"; !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	after, err := os.Lstat(sock)
	if err != nil || !os.SameFile(before, after) {
		t.Fatalf("the live socket was replaced or removed (%v)", err)
	}
	if !answers(t, first, sock) {
		t.Fatal("the first listener no longer gets connections")
	}
}

// TestEndpointCloseRemovesOnlyItsOwnSocket: closing an endpoint removes
// its socket file, but not a socket another process put at the same path
// since; that one keeps serving.
func TestEndpointCloseRemovesOnlyItsOwnSocket(t *testing.T) {
	dir := t.TempDir()
	own := filepath.Join(dir, "own.sock")
	ep, err := OpenEndpoint("unix://" + own)
	if err != nil {
		t.Fatal(err)
	}
	if err := ep.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(own); !os.IsNotExist(err) {
		t.Errorf("own socket after Close: %v; want it removed", err)
	}

	sock := filepath.Join(dir, "csi.sock")
	old, err := OpenEndpoint("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	// Another process replaces the socket file while old still runs.
	if err := os.Remove(sock); err != nil {
		t.Fatal(err)
	}
	other, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	other.SetUnlinkOnClose(false)
	defer other.Close()
	theirs, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	old.Close()
	now, err := os.Lstat(sock)
	if err != nil || !os.SameFile(theirs, now) {
		t.Fatalf("closing the old endpoint removed the other process's socket (%v)", err)
	}
	if !answers(t, other, sock) {
		t.Fatal("the other process's socket no longer gets connections")
	}
}
