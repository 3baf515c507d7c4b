package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// controllerCommand is the cluster component's binary. It is a command of
// its own so that the node driver, which runs on every node, does not link
// client-go's clientset and leader election: their start-up alone costs
// about 9 MiB of memory (BenchmarkIdleRSS).
const controllerCommand = "ecs-localdisk-csi-controller"

// execController replaces this process with the cluster component, given
// args: "ecs-localdisk-csi controller ..." runs as it always has. It
// returns only when that fails, with exit code 1.
func execController(args []string, stderr io.Writer) int {
	path, err := controllerBinary()
	if err != nil {
		fmt.Fprintf(stderr, "ecs-localdisk-csi controller runs %s, which is not installed beside this binary or on PATH: %v\n", controllerCommand, err)
		return 1
	}
	err = syscall.Exec(path, append([]string{path}, args...), os.Environ())
	fmt.Fprintf(stderr, "running %s: %v\n", path, err)
	return 1
}

// controllerBinary is the cluster component beside this binary (as the
// image and make build install them), else on PATH.
func controllerBinary() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), controllerCommand)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return exec.LookPath(controllerCommand)
}
