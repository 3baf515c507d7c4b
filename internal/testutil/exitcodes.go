package testutil

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// ExitCase is a command line and what the command is to answer: its exit
// code and text its stdout and stderr hold; "" wants that stream empty.
type ExitCase struct {
	Args         []string
	Code         int
	Stdout, Errs string
}

// Exit is the case of args: exit code, text stdout and stderr hold.
func Exit(code int, stdout, errs string, args ...string) ExitCase {
	return ExitCase{Args: args, Code: code, Stdout: stdout, Errs: errs}
}

// CheckExitCodes runs each case through run, a command's main without the
// exit, and reports every answer that differs.
func CheckExitCodes(t *testing.T, run func(args []string, stdout, stderr io.Writer) int, cases []ExitCase) {
	t.Helper()
	for _, c := range cases {
		var stdout, stderr bytes.Buffer
		if got := run(c.Args, &stdout, &stderr); got != c.Code {
			t.Errorf("run(%q) = %d; want %d\nstderr: %s", c.Args, got, c.Code, stderr.String())
		}
		if !strings.Contains(stdout.String(), c.Stdout) || c.Stdout == "" && stdout.Len() > 0 {
			t.Errorf("run(%q) stdout %q; want it to hold %q", c.Args, stdout.String(), c.Stdout)
		}
		if !strings.Contains(stderr.String(), c.Errs) || c.Errs == "" && stderr.Len() > 0 {
			t.Errorf("run(%q) stderr %q; want it to hold %q", c.Args, stderr.String(), c.Errs)
		}
	}
}
