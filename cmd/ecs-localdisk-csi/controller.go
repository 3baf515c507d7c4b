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
// client-go's clientset and leader election: they cost the node driver
// about 10 MiB of its idle memory (BenchmarkIdleRSS).
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
// image and make build install them; a symbolic link to this binary counts
// from where it points), else on PATH. Either must be an executable file.
func controllerBinary() (string, error) {
	if self, err := os.Executable(); err == nil {
		if p, err := exec.LookPath(filepath.Join(filepath.Dir(self), controllerCommand)); err == nil {
			return p, nil
		}
	}
	return exec.LookPath(controllerCommand)
}
