package driver

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestListenSocketIsPrivate: the CSI socket is 0600 in a 0750 directory:
// only root (the kubelet and the sidecars) may call the driver.
func TestListenSocketIsPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "plugin")
	sock := filepath.Join(dir, "csi.sock")
	l, err := Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v; want a 0600 socket", fi.Mode())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm()&0o007 != 0 {
		t.Fatalf("socket directory mode %v gives others access", di.Mode())
	}
	// A stale socket (left by a crashed driver) is replaced.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("no stale socket to replace: %v", err)
	}
	if l2, err := Listen("unix://" + sock); err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	} else {
		l2.Close()
	}
}

// TestListenKeepsOtherFiles: an endpoint naming a file that is not a
// socket is refused, and the file is left as it was.
func TestListenKeepsOtherFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "important")
	if err := os.WriteFile(path, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := Listen("unix://" + path); err == nil {
		l.Close()
		t.Fatal("Listen replaced a regular file")
	} else if !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("error %q does not say why", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "data" {
		t.Fatalf("file after Listen: %q, %v", b, err)
	}
}

// TestNoShellInDriverCode: the driver runs every tool with an argument
// vector, never through a shell, so no class parameter, mount flag or
// device name can be read as shell syntax. It checks every non-test Go
// file of the driver for a command whose program is a shell.
func TestNoShellInDriverCode(t *testing.T) {
	shells := map[string]bool{"sh": true, "bash": true, "/bin/sh": true, "/bin/bash": true, "/usr/bin/sh": true, "/usr/bin/bash": true}
	files := 0
	for _, root := range []string{"../../cmd", "../../pkg", "../../internal"} {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			files++
			f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
			if err != nil {
				return err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				for _, a := range call.Args {
					if lit, ok := a.(*ast.BasicLit); ok && lit.Kind == token.STRING {
						if s, _ := strconv.Unquote(lit.Value); shells[s] {
							t.Errorf("%s: a call runs the shell %q", path, s)
						}
					}
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if files < 20 {
		t.Fatalf("only %d Go files checked; the walk went wrong", files)
	}
}
