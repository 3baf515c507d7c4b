// Package deploy renders every kustomize overlay of deploy/kubernetes, as
// `kubectl kustomize` does, and the Helm chart deploy/helm/ecs-localdisk-csi
// they are generated from, and checks what the driver needs of them. It is
// its own Go module so that kustomize and Helm stay out of the driver's
// dependencies.
package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/resmap"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/kustomize/kyaml/yaml"
)

const root = "../../deploy/kubernetes"

func render(t *testing.T, dir string) resmap.ResMap {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	return m
}

func get(t *testing.T, m resmap.ResMap, kind, name string) *yaml.RNode {
	t.Helper()
	for _, r := range m.Resources() {
		if r.GetKind() == kind && r.GetName() == name {
			n, err := yaml.Parse(r.MustYaml())
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("%s/%s not rendered", kind, name)
	return nil
}

func field(t *testing.T, n *yaml.RNode, path ...string) string {
	t.Helper()
	v, err := n.Pipe(yaml.Lookup(path...))
	if err != nil || v == nil {
		t.Fatalf("no %s", strings.Join(path, "."))
	}
	return strings.TrimSpace(v.MustString())
}

func TestOverlays(t *testing.T) {
	overlays, err := os.ReadDir(filepath.Join(root, "overlays"))
	if err != nil || len(overlays) < 2 {
		t.Fatalf("overlays: %v %v", overlays, err)
	}
	for _, o := range overlays {
		t.Run(o.Name(), func(t *testing.T) {
			m := render(t, filepath.Join(root, "overlays", o.Name()))
			checkCSIDriver(t, m)
			ds := get(t, m, "DaemonSet", "ecs-localdisk-csi-node")
			checkDaemonSet(t, ds, o.Name())
			checkRBAC(t, m)
			checkController(t, get(t, m, "Deployment", "ecs-localdisk-csi-controller"), o.Name())
		})
	}
}

func checkCSIDriver(t *testing.T, m resmap.ResMap) {
	d := get(t, m, "CSIDriver", "localdisk.csi.alibabacloud.com")
	for path, want := range map[string]string{
		"attachRequired": "false", "podInfoOnMount": "true", "storageCapacity": "true", "fsGroupPolicy": "File",
		"volumeLifecycleModes": "- Persistent",
	} {
		if got := field(t, d, "spec", path); got != want {
			t.Errorf("CSIDriver spec.%s = %q, want %q", path, got, want)
		}
	}
}

func container(t *testing.T, ds *yaml.RNode, name string) *yaml.RNode {
	t.Helper()
	c, err := ds.Pipe(yaml.Lookup("spec", "template", "spec", "containers", "[name="+name+"]"))
	if err != nil || c == nil {
		t.Fatalf("no container %s", name)
	}
	return c
}

func checkDaemonSet(t *testing.T, ds *yaml.RNode, overlay string) {
	if got := field(t, ds, "spec", "template", "spec", "priorityClassName"); got != "system-node-critical" {
		t.Errorf("priorityClassName %q", got)
	}
	if got := field(t, ds, "spec", "template", "spec", "nodeSelector"); !strings.Contains(got, "localdisk.csi.alibabacloud.com/local-disks") {
		t.Errorf("node selector %q", got)
	}
	drv := container(t, ds, "driver")
	if got := field(t, drv, "securityContext", "privileged"); got != "true" {
		t.Errorf("driver not privileged")
	}
	args := field(t, drv, "args")
	if !strings.Contains(args, "--disk-source="+overlay) {
		t.Errorf("driver args lack --disk-source=%s:\n%s", overlay, args)
	}
	if got := field(t, drv, "env", "[name=NODE_NAME]", "valueFrom", "fieldRef", "fieldPath"); got != "spec.nodeName" {
		t.Errorf("NODE_NAME from %q", got)
	}
	if got := field(t, drv, "volumeMounts", "[name=kubelet-dir]", "mountPropagation"); got != "Bidirectional" {
		t.Errorf("kubelet dir propagation %q", got)
	}
	for _, v := range []string{"dev", "plugin-dir", "kubelet-dir"} {
		field(t, drv, "volumeMounts", "[name="+v+"]", "mountPath")
	}
	prov := container(t, ds, "csi-provisioner")
	pargs := field(t, prov, "args")
	for _, a := range []string{"--node-deployment", "--enable-capacity", "--capacity-ownerref-level=1", "--strict-topology", "--immediate-topology=false", "--extra-create-metadata",
		"--kube-api-qps=10", "--kube-api-burst=50"} {
		if !strings.Contains(pargs, "- "+a+"\n") && !strings.HasSuffix(pargs, "- "+a) {
			t.Errorf("csi-provisioner lacks %s", a)
		}
	}
	for env, from := range map[string]string{"NODE_NAME": "spec.nodeName", "NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"} {
		if got := field(t, prov, "env", "[name="+env+"]", "valueFrom", "fieldRef", "fieldPath"); got != from {
			t.Errorf("provisioner %s from %q", env, got)
		}
	}
	container(t, ds, "node-driver-registrar")
	container(t, ds, "liveness-probe")
	if overlay == "ecs" {
		if got := field(t, drv, "envFrom"); !strings.Contains(got, "ecs-localdisk-credentials") || !strings.Contains(got, "optional: true") {
			t.Errorf("ecs overlay credentials: %s", got)
		}
	}
}

// grants are every permission the shipped roles give, as
// "Kind/name: group/resource verb": an allowlist, so a rule that grows fails
// here, and a rule that shrinks too far fails the end-to-end suite, which
// runs csi-provisioner and the driver with these roles. Each is one that
// csi-provisioner v6.4.0, the driver's LocalDisk mirror or the cluster
// component uses (the chart's rbac.yaml and controller-rbac.yaml say why).
var grants = []string{
	"ClusterRole/ecs-localdisk-csi-provisioner: /persistentvolumes get list watch create delete patch",
	"ClusterRole/ecs-localdisk-csi-provisioner: /persistentvolumeclaims get list watch update",
	"ClusterRole/ecs-localdisk-csi-provisioner: storage.k8s.io/storageclasses get list watch",
	"ClusterRole/ecs-localdisk-csi-provisioner: /events create patch",
	"ClusterRole/ecs-localdisk-csi-provisioner: storage.k8s.io/csinodes get list watch",
	"ClusterRole/ecs-localdisk-csi-provisioner: /nodes get list watch",
	"Role/ecs-localdisk-csi-capacity: storage.k8s.io/csistoragecapacities get list watch create update patch delete",
	"Role/ecs-localdisk-csi-capacity: /pods get",
	"Role/ecs-localdisk-csi-capacity: apps/daemonsets get",
	"ClusterRole/ecs-localdisk-csi-node-disks: localdisk.csi.alibabacloud.com/localdisks get list watch create delete",
	"ClusterRole/ecs-localdisk-csi-node-disks: localdisk.csi.alibabacloud.com/localdisks/status update",
	"ClusterRole/ecs-localdisk-csi-node-disks: /nodes get",
	"ClusterRole/ecs-localdisk-csi-node-disks: /persistentvolumes get",
	"ClusterRole/ecs-localdisk-csi-node-disks: /persistentvolumeclaims get",
	"ClusterRole/ecs-localdisk-csi-node-disks: /events create patch",
	"ClusterRole/ecs-localdisk-csi-controller: /persistentvolumes get list watch delete patch",
	"ClusterRole/ecs-localdisk-csi-controller: /persistentvolumeclaims get delete",
	"ClusterRole/ecs-localdisk-csi-controller: /pods list delete",
	"ClusterRole/ecs-localdisk-csi-controller: /pods/eviction create",
	"ClusterRole/ecs-localdisk-csi-controller: /nodes get list watch",
	"ClusterRole/ecs-localdisk-csi-controller: storage.k8s.io/storageclasses get list watch",
	"ClusterRole/ecs-localdisk-csi-controller: localdisk.csi.alibabacloud.com/localdisks get list watch patch delete",
	"ClusterRole/ecs-localdisk-csi-controller: /events create patch",
	"Role/ecs-localdisk-csi-controller: storage.k8s.io/csistoragecapacities list watch delete",
	"Role/ecs-localdisk-csi-controller: coordination.k8s.io/leases get create update",
	"Role/ecs-localdisk-csi-controller: /events create patch",
}

// checkRBAC: the roles grant exactly grants, the Role lives in the
// driver's namespace, and each binding names the driver's ServiceAccount.
func checkRBAC(t *testing.T, m resmap.ResMap) {
	var got []string
	for _, r := range m.Resources() {
		kind := r.GetKind()
		if kind != "ClusterRole" && kind != "Role" {
			continue
		}
		n, err := yaml.Parse(r.MustYaml())
		if err != nil {
			t.Fatal(err)
		}
		rules, err := n.Pipe(yaml.Lookup("rules"))
		if err != nil || rules == nil {
			t.Fatalf("%s/%s has no rules", kind, r.GetName())
		}
		elems, _ := rules.Elements()
		for _, rule := range elems {
			list := func(f string) []string {
				v, err := rule.Pipe(yaml.Lookup(f))
				if err != nil || v == nil {
					return nil
				}
				items, _ := v.Elements()
				var out []string
				for _, it := range items {
					out = append(out, it.YNode().Value)
				}
				return out
			}
			for _, g := range list("apiGroups") {
				for _, res := range list("resources") {
					got = append(got, fmt.Sprintf("%s/%s: %s/%s %s", kind, r.GetName(), g, res, strings.Join(list("verbs"), " ")))
				}
			}
			if len(list("resourceNames")) > 0 || len(list("nonResourceURLs")) > 0 {
				t.Errorf("%s/%s: a rule with resourceNames or nonResourceURLs is not in the allowlist", kind, r.GetName())
			}
		}
	}
	slices.Sort(got)
	want := slices.Clone(grants)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("RBAC grants:\n  %s\nwant exactly:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	if ns := field(t, get(t, m, "Role", "ecs-localdisk-csi-capacity"), "metadata", "namespace"); ns != "ecs-localdisk-csi" {
		t.Errorf("capacity Role in namespace %q", ns)
	}
	for _, b := range []struct{ kind, name, sa string }{{"ClusterRoleBinding", "ecs-localdisk-csi-provisioner", "node"}, {"RoleBinding", "ecs-localdisk-csi-capacity", "node"},
		{"ClusterRoleBinding", "ecs-localdisk-csi-controller", "controller"}, {"RoleBinding", "ecs-localdisk-csi-controller", "controller"}} {
		subjects := field(t, get(t, m, b.kind, b.name), "subjects")
		if !strings.Contains(subjects, "name: ecs-localdisk-csi-"+b.sa+"\n") || strings.Count(subjects, "- kind:") != 1 {
			t.Errorf("%s/%s subjects:\n%s", b.kind, b.name, subjects)
		}
	}
}

// checkController: the cluster component runs the controller mode of the
// driver's image, unprivileged, with no host access, its cloud following
// the overlay (ecs confirms with ECS, static cannot), and its own
// ServiceAccount.
func checkController(t *testing.T, d *yaml.RNode, overlay string) {
	t.Helper()
	spec, err := d.Pipe(yaml.Lookup("spec", "template", "spec"))
	if err != nil || spec == nil {
		t.Fatal("controller: no pod spec")
	}
	if got := field(t, spec, "serviceAccountName"); got != "ecs-localdisk-csi-controller" {
		t.Errorf("controller service account %q", got)
	}
	for _, f := range []string{"hostNetwork", "hostPID", "volumes"} {
		if v, _ := spec.Pipe(yaml.Lookup(f)); v != nil {
			t.Errorf("controller pod sets %s", f)
		}
	}
	if got := field(t, spec, "securityContext", "runAsNonRoot"); got != "true" {
		t.Errorf("controller runAsNonRoot %q", got)
	}
	c := container(t, d, "controller")
	if got := field(t, c, "securityContext", "allowPrivilegeEscalation"); got != "false" {
		t.Errorf("controller allowPrivilegeEscalation %q", got)
	}
	if got := field(t, c, "securityContext", "capabilities", "drop"); got != "- ALL" {
		t.Errorf("controller capabilities drop %q", got)
	}
	cloud := map[string]string{"ecs": "ecs", "static": "none"}[overlay]
	args := field(t, c, "args")
	if !strings.HasPrefix(args, "- controller\n") || !strings.Contains(args, "- --cloud="+cloud+"\n") {
		t.Errorf("controller args in the %s overlay lack controller, --cloud=%s:\n%s", overlay, cloud, args)
	}
	if v, _ := c.Pipe(yaml.Lookup("envFrom")); (v != nil) != (overlay == "ecs") {
		t.Errorf("controller credentials in the %s overlay: envFrom %v", overlay, v != nil)
	}
}
