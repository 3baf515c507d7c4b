//go:build crashpoints

package crashpoint

import (
	"os"
	"strings"
	"syscall"
)

// Hit kills the process group with SIGKILL when the crash point file names
// point.
func Hit(point string) {
	path := os.Getenv("ECS_LOCALDISK_CRASHPOINT_FILE")
	if path == "" {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil || strings.TrimSpace(string(b)) != point {
		return
	}
	// The harness starts the driver as the leader of its own process
	// group: the driver and any mkfs or wipe it runs die together.
	_ = syscall.Kill(0, syscall.SIGKILL)
	select {} // SIGKILL cannot be caught; nothing runs after it
}
