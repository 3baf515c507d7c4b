package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/kustomize/kyaml/kio"
	"sigs.k8s.io/kustomize/kyaml/yaml"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/driver"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/options"
)

// TestExamples parses every example manifest and runs each StorageClass
// through the driver's own parameter and mount-option validation, so an
// example cannot drift from what the driver accepts.
func TestExamples(t *testing.T) {
	files, _ := filepath.Glob("../../examples/*/*.yaml")
	if len(files) < 5 {
		t.Fatalf("only %d example files", len(files))
	}
	classes := map[string]bool{}
	var claimsOf []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		nodes, err := kio.FromBytes(b)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, n := range nodes {
			switch n.GetKind() {
			case "StorageClass":
				checkClass(t, f, n)
				classes[n.GetName()] = true
			case "PersistentVolumeClaim", "StatefulSet":
				s, _ := n.String()
				for _, l := range strings.Split(s, "\n") {
					if v, ok := strings.CutPrefix(strings.TrimSpace(l), "storageClassName: "); ok {
						claimsOf = append(claimsOf, v)
					}
				}
			}
		}
	}
	for _, c := range claimsOf {
		if !classes[c] {
			t.Errorf("an example claims from class %q, which no example defines", c)
		}
	}
	if len(claimsOf) < 2 {
		t.Errorf("claims found: %v", claimsOf)
	}
}

func checkClass(t *testing.T, file string, n *yaml.RNode) {
	prov, _ := n.Pipe(yaml.Lookup("provisioner"))
	if prov == nil || strings.TrimSpace(prov.MustString()) != options.DefaultDriverName {
		t.Errorf("%s: provisioner is not %s", file, options.DefaultDriverName)
	}
	mode, _ := n.Pipe(yaml.Lookup("volumeBindingMode"))
	if mode == nil || strings.TrimSpace(mode.MustString()) != "WaitForFirstConsumer" {
		t.Errorf("%s: volumeBindingMode must be WaitForFirstConsumer", file)
	}
	params := map[string]string{}
	if p, _ := n.Pipe(yaml.Lookup("parameters")); p != nil {
		p.VisitFields(func(f *yaml.MapNode) error {
			params[f.Key.YNode().Value] = f.Value.YNode().Value
			return nil
		})
	}
	if _, err := driver.ParseParams(params); err != nil {
		t.Errorf("%s: the driver rejects the parameters: %v", file, err)
	}
	var flags []string
	if m, _ := n.Pipe(yaml.Lookup("mountOptions")); m != nil {
		for _, e := range m.Content() {
			flags = append(flags, e.Value)
		}
	}
	if err := driver.ValidateMountFlags(flags); err != nil {
		t.Errorf("%s: the driver rejects the mount options: %v", file, err)
	}
}
