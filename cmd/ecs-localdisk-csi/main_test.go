package main

import (
	"os"
	"testing"
)

func TestExitCodes(t *testing.T) {
	os.Unsetenv("NODE_NAME")
	cases := []struct {
		args []string
		code int
	}{
		{[]string{"--version"}, 0},
		{[]string{"--no-such-flag"}, 2},
		{[]string{"--devices=/dev/vdb"}, 2}, // no node ID
		{[]string{"--node-id=n1", "--disk-source=ecs-typo", "--devices=/dev/vdb"}, 2},
		{[]string{"--node-id=n1", "--devices=/dev/vdb", "stray"}, 2},
	}
	for _, c := range cases {
		if got := run(c.args); got != c.code {
			t.Errorf("run(%q) = %d; want %d", c.args, got, c.code)
		}
	}
}
