// Package helmchart renders the driver's Helm chart as `helm template` does,
// and derives from it the kustomize base under deploy/kubernetes/base: the
// chart is the one source of the manifests.
package helmchart

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	"helm.sh/helm/v3/pkg/strvals"
	"sigs.k8s.io/kustomize/kyaml/kio"
)

const (
	// Namespace is the namespace of the kustomize manifests, so the release
	// namespace of the render that becomes the base.
	Namespace = "ecs-localdisk-csi"
	// ReleaseName is the release name of every render here; no object
	// name depends on it.
	ReleaseName = "ecs-localdisk-csi"
	// Command regenerates the base, run from tests/deploy.
	Command = "go run ./cmd/genbase"
)

// BaseSets are the values, in --set form, of the render that is the
// kustomize base: the chart's defaults, plus the Namespace object that
// `kubectl apply -k` needs and `helm install --create-namespace` must not
// render.
var BaseSets = []string{"createNamespace=true"}

const header = "# Generated from deploy/helm/ecs-localdisk-csi by tests/deploy/cmd/genbase\n" +
	"# (cd tests/deploy && " + Command + "): edit the chart, not this file.\n"

// Values parses assignments as `helm --set` does into one values map.
func Values(sets ...string) (map[string]any, error) {
	vals := map[string]any{}
	for _, s := range sets {
		if err := strvals.ParseInto(s, vals); err != nil {
			return nil, fmt.Errorf("--set %s: %w", s, err)
		}
	}
	return vals, nil
}

// Load reads the chart in dir.
func Load(dir string) (*chart.Chart, error) {
	return loader.Load(dir)
}

// Render renders the chart in dir, as a fresh install into namespace with
// vals over the chart's defaults, and returns each template's output by
// its file name under templates/. Helper templates, NOTES.txt and
// templates that render nothing are left out.
func Render(dir, namespace string, vals map[string]any) (map[string]string, error) {
	c, err := Load(dir)
	if err != nil {
		return nil, err
	}
	top, err := chartutil.ToRenderValues(c, vals, chartutil.ReleaseOptions{
		Name: ReleaseName, Namespace: namespace, IsInstall: true, Revision: 1,
	}, nil)
	if err != nil {
		return nil, err
	}
	out, err := engine.Render(c, top)
	if err != nil {
		return nil, err
	}
	files := map[string]string{}
	prefix := c.Name() + "/templates/"
	for name, text := range out {
		rel, ok := strings.CutPrefix(name, prefix)
		if !ok || strings.Contains(rel, "/") {
			return nil, fmt.Errorf("template %s: not directly under templates/", name)
		}
		text = strings.TrimSpace(text)
		if rel == "NOTES.txt" || text == "" {
			continue
		}
		files[rel] = text + "\n"
	}
	return files, nil
}

// Base returns the files of deploy/kubernetes/base: each template of the
// chart rendered with BaseSets into Namespace, under a note that it is
// generated, and a kustomization.yaml listing them in Helm's install order.
func Base(chartDir string) (map[string][]byte, error) {
	vals, err := Values(BaseSets...)
	if err != nil {
		return nil, err
	}
	rendered, err := Render(chartDir, Namespace, vals)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{}
	rank := map[string]int{}
	var names []string
	for name, text := range rendered {
		nodes, err := kio.FromBytes([]byte(text))
		if err != nil || len(nodes) == 0 {
			return nil, fmt.Errorf("%s renders no object: %v", name, err)
		}
		rank[name] = installRank(nodes[0].GetKind())
		files[name] = []byte(header + "\n" + text)
		names = append(names, name)
	}
	slices.SortFunc(names, func(a, b string) int {
		if rank[a] != rank[b] {
			return rank[a] - rank[b]
		}
		return strings.Compare(a, b)
	})
	var k bytes.Buffer
	k.WriteString(header)
	k.WriteString("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n")
	for _, n := range names {
		fmt.Fprintf(&k, "  - %s\n", n)
	}
	files["kustomization.yaml"] = k.Bytes()
	return files, nil
}

// installRank is kind's place in the order Helm installs objects in;
// kinds Helm does not know come last, as Helm installs them.
func installRank(kind string) int {
	if i := slices.Index(releaseutil.InstallOrder, kind); i >= 0 {
		return i
	}
	return len(releaseutil.InstallOrder)
}

// WriteBase replaces the YAML files of dir with files: each is written to a
// temporary file, synced and renamed into place, then the YAML files of
// dir that files does not hold are removed.
func WriteBase(dir string, files map[string][]byte) error {
	for name, b := range files {
		if err := writeFile(filepath.Join(dir, name), b); err != nil {
			return err
		}
	}
	old, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return err
	}
	for _, p := range old {
		if _, ok := files[filepath.Base(p)]; !ok {
			if err := os.Remove(p); err != nil {
				return err
			}
		}
	}
	return nil
}

func writeFile(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
