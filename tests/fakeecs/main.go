// Command fakeecs serves the driver's fake ECS (pkg/cloud.Fake), a metadata
// server and an OpenAPI endpoint on loopback, for one instance described by
// a JSON file, until it is stopped. The end-to-end suite runs one per node
// whose disks the driver finds through the ECS source.
//
//	fakeecs --spec instance.json --urls urls.json
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/cloud"
)

// Spec is the instance the fake reports.
type Spec struct {
	Instance cloud.Instance
	Type     cloud.InstanceType
	Disks    []cloud.FakeDisk
}

func main() {
	specPath := flag.String("spec", "", "JSON file with the instance, its type and its disks")
	urlsPath := flag.String("urls", "", "file to write {\"metadata\":..., \"api\":...} to once serving")
	flag.Parse()
	if err := run(*specPath, *urlsPath); err != nil {
		fmt.Fprintln(os.Stderr, "fakeecs:", err)
		os.Exit(1)
	}
}

func run(specPath, urlsPath string) error {
	if specPath == "" || urlsPath == "" {
		return fmt.Errorf("--spec and --urls are required")
	}
	b, err := os.ReadFile(specPath)
	if err != nil {
		return err
	}
	var spec Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return fmt.Errorf("%s: %w", specPath, err)
	}
	f := cloud.NewFake(spec.Instance)
	defer f.Close()
	f.Update(func(f *cloud.Fake) {
		f.TokenMode = true
		f.Types[spec.Instance.Type] = spec.Type
		f.Disks = spec.Disks
	})
	urls, _ := json.Marshal(map[string]string{"metadata": f.Metadata.URL, "api": f.API.URL})
	if err := os.WriteFile(urlsPath+".tmp", urls, 0o600); err != nil {
		return err
	}
	if err := os.Rename(urlsPath+".tmp", urlsPath); err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}
