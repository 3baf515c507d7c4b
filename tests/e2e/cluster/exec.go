package cluster

import "os/exec"

// execCommand runs short-lived tools (kubectl); a variable so tests of the
// harness could replace it.
var execCommand = exec.CommandContext
