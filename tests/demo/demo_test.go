package main

import (
	"os/exec"
	"path/filepath"
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
			if err := run(bin, source, false); err != nil {
				t.Fatal(err)
			}
		})
	}
}
