package main

import (
	"testing"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

// TestExitCodes: help exits 0 on stdout; every bad flag exits 2 with a
// message on stderr that names the problem and the command as users run
// it. No case here passes Validate, so none starts the controller.
func TestExitCodes(t *testing.T) {
	testutil.CheckExitCodes(t, run, []testutil.ExitCase{
		testutil.Exit(0, "Controller flags:", "", "--help"),
		testutil.Exit(2, "", `--cloud "aws" is not supported`, "--cloud=aws"),
		testutil.Exit(2, "", "--ram-role only applies to --cloud=ecs", "--cloud=none", "--ram-role=r"),
		testutil.Exit(2, "", "--node-loss-grace-period 0s must be at least 1s", "--node-loss-grace-period=0s"),
		testutil.Exit(2, "", `unexpected arguments: ["stray"]`, "stray"),
		testutil.Exit(2, "", "flag provided but not defined: -node-id\nRun ecs-localdisk-csi controller --help", "--node-id=n1"),
	})
}
