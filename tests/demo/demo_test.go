package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

// TestDemo runs the README's quick start, with both disk sources, against a
// freshly built driver binary.
func TestDemo(t *testing.T) {
	testutil.RequireRoot(t)
	bin := filepath.Join(t.TempDir(), "ecs-localdisk-csi")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/ecs-localdisk-csi").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	for _, source := range []string{"static", "ecs"} {
		t.Run(source, func(t *testing.T) {
			logPath, err := run(bin, source, false)
			if logPath != "" {
				defer os.Remove(logPath)
			}
			if err != nil {
				t.Fatal(err)
			}
			// The log whose path the demo printed is still there.
			b, err := os.ReadFile(logPath)
			if err != nil || !strings.Contains(string(b), `"Ready"`) || !strings.Contains(string(b), "DeleteVolume") {
				t.Errorf("driver log %q not kept whole (%v):\n%s", logPath, err, b)
			}
		})
	}
}
