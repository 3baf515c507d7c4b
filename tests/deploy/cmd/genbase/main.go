// Command genbase writes the kustomize base deploy/kubernetes/base from the
// Helm chart deploy/helm/ecs-localdisk-csi rendered with its default values
// (and the Namespace object): the chart is the source, the base its output.
// Run it from tests/deploy after changing the chart:
//
//	go run ./cmd/genbase
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/ecs-localdisk/ecs-localdisk-csi/tests/deploy/internal/helmchart"
)

func main() {
	chartDir := flag.String("chart", "../../deploy/helm/ecs-localdisk-csi", "the chart's directory")
	out := flag.String("out", "../../deploy/kubernetes/base", "the kustomize base directory to write")
	flag.Parse()
	files, err := helmchart.Base(*chartDir)
	if err == nil {
		err = helmchart.WriteBase(*out, files)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "genbase:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %d files to %s\n", len(files), *out)
}
