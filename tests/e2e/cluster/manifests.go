package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// Rendered is one overlay of the shipped manifests as kustomize renders it
// (kubectl kustomize), one decoded object per document.
type Rendered struct {
	Objects []map[string]any
}

// Render renders the kustomization in dir with the kubectl in bin.
func Render(ctx context.Context, bin, dir string) (*Rendered, error) {
	out, err := exec.CommandContext(ctx, filepath.Join(bin, "kubectl"), "kustomize", dir).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, ee.Stderr)
		}
		return nil, fmt.Errorf("kubectl kustomize %s: %w", dir, err)
	}
	r := &Rendered{}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
		if obj != nil {
			r.Objects = append(r.Objects, obj)
		}
	}
	return r, nil
}

func kindName(obj map[string]any) (kind, name string) {
	kind, _ = obj["kind"].(string)
	meta, _ := obj["metadata"].(map[string]any)
	name, _ = meta["name"].(string)
	return kind, name
}

// convert re-decodes a rendered object into a typed API object.
func convert(obj map[string]any, into any) error {
	b, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, into)
}

// DaemonSet is the overlay's one DaemonSet.
func (r *Rendered) DaemonSet() (*appsv1.DaemonSet, error) {
	var found *appsv1.DaemonSet
	for _, obj := range r.Objects {
		if kind, _ := kindName(obj); kind != "DaemonSet" {
			continue
		}
		if found != nil {
			return nil, fmt.Errorf("more than one DaemonSet rendered")
		}
		found = &appsv1.DaemonSet{}
		if err := convert(obj, found); err != nil {
			return nil, err
		}
	}
	if found == nil {
		return nil, fmt.Errorf("no DaemonSet rendered")
	}
	return found, nil
}

// configMaps is the data of the overlay's ConfigMaps, by name.
func (r *Rendered) configMaps() (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	for _, obj := range r.Objects {
		if kind, name := kindName(obj); kind == "ConfigMap" {
			var cm corev1.ConfigMap
			if err := convert(obj, &cm); err != nil {
				return nil, err
			}
			out[name] = cm.Data
		}
	}
	return out, nil
}

// Container is the container called name in the DaemonSet's pod template.
func Container(ds *appsv1.DaemonSet, name string) (*corev1.Container, error) {
	for i := range ds.Spec.Template.Spec.Containers {
		if c := &ds.Spec.Template.Spec.Containers[i]; c.Name == name {
			return c, nil
		}
	}
	return nil, fmt.Errorf("DaemonSet %s has no container %q", ds.Name, name)
}

// DropRule removes one permission from the rendered RBAC: spec is
// "Kind/name/resource" (the resource from every rule of that Role or
// ClusterRole) or "Kind/name/resource/verb" (that verb on that resource
// only). A spec that matches nothing is an error, so that a misspelt one
// cannot pass for a harmless rule.
func (r *Rendered) DropRule(spec string) error {
	parts := strings.Split(spec, "/")
	if len(parts) != 3 && len(parts) != 4 {
		return fmt.Errorf("drop rule %q: want Kind/name/resource[/verb]", spec)
	}
	kind, name, resource := parts[0], parts[1], parts[2]
	verb := ""
	if len(parts) == 4 {
		verb = parts[3]
	}
	dropped := false
	for _, obj := range r.Objects {
		if k, n := kindName(obj); k != kind || n != name || (k != "Role" && k != "ClusterRole") {
			continue
		}
		var role rbacv1.ClusterRole // a Role's rules read the same
		if err := convert(obj, &role); err != nil {
			return err
		}
		var rules []rbacv1.PolicyRule
		for _, rule := range role.Rules {
			if !slices.Contains(rule.Resources, resource) {
				rules = append(rules, rule)
				continue
			}
			dropped = dropped || verb == "" || slices.Contains(rule.Verbs, verb) || slices.Contains(rule.Verbs, "*")
			rest := rule
			rest.Resources = slices.DeleteFunc(slices.Clone(rule.Resources), func(s string) bool { return s == resource })
			if len(rest.Resources) > 0 {
				rules = append(rules, rest)
			}
			if verb == "" {
				continue
			}
			// The resource keeps its other verbs in a rule of its own.
			kept := rule
			kept.Resources = []string{resource}
			kept.Verbs = slices.DeleteFunc(slices.Clone(rule.Verbs), func(s string) bool { return s == verb })
			if len(kept.Verbs) > 0 && !slices.Contains(kept.Verbs, "*") {
				rules = append(rules, kept)
			}
		}
		b, err := json.Marshal(rules)
		if err != nil {
			return err
		}
		var generic []any
		if err := json.Unmarshal(b, &generic); err != nil {
			return err
		}
		obj["rules"] = generic
	}
	if !dropped {
		return fmt.Errorf("drop rule %q matches no rule of the rendered RBAC", spec)
	}
	return nil
}

// list is the overlay as one List object, for kubectl apply.
func (r *Rendered) list() ([]byte, error) {
	items := make([]any, len(r.Objects))
	for i, obj := range r.Objects {
		items[i] = obj
	}
	return json.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
}

// deployment is what Deploy applied, which the nodes start from.
type deployment struct {
	static, ecs *appsv1.DaemonSet
	configMaps  map[string]map[string]string
	// controller is the ecs overlay's cluster component (StartController).
	controller *appsv1.Deployment
}

// Deploy applies the deployment as shipped: every object of the static
// overlay under dir (deploy/kubernetes), rendered by kustomize, the
// Namespace, ServiceAccount, RBAC, CSIDriver, devices ConfigMap and the
// DaemonSet. Nodes added afterwards run the DaemonSet's containers as host
// processes (those of the ecs overlay's DaemonSet on nodes whose disks come
// from the fake ECS). drop, unless "", is a DropRule applied to the RBAC
// first.
func (cp *ControlPlane) Deploy(ctx context.Context, dir, drop string) error {
	static, err := Render(ctx, cp.cfg.Bin, filepath.Join(dir, "overlays", "static"))
	if err != nil {
		return err
	}
	ecs, err := Render(ctx, cp.cfg.Bin, filepath.Join(dir, "overlays", "ecs"))
	if err != nil {
		return err
	}
	if drop != "" {
		if err := static.DropRule(drop); err != nil {
			return err
		}
	}
	d := &deployment{}
	if d.static, err = static.DaemonSet(); err != nil {
		return err
	}
	if d.ecs, err = ecs.DaemonSet(); err != nil {
		return err
	}
	if d.static.Namespace != d.ecs.Namespace || d.static.Name != d.ecs.Name {
		return fmt.Errorf("the overlays' DaemonSets differ: %s/%s and %s/%s", d.static.Namespace, d.static.Name, d.ecs.Namespace, d.ecs.Name)
	}
	if d.configMaps, err = static.configMaps(); err != nil {
		return err
	}
	if d.controller, err = ecs.deploymentOf(controllerDeployment); err != nil {
		return err
	}
	// Harness: no pod of the controller's Deployment runs, so that a real
	// node's kubelet does not try to pull the driver's image; a test that
	// needs the controller runs its container as a host process
	// (StartController).
	if err := static.scaleToZero(controllerDeployment); err != nil {
		return err
	}
	list, err := static.list()
	if err != nil {
		return err
	}
	if _, err := cp.Kubectl(ctx, string(list), "apply", "-f", "-"); err != nil {
		return err
	}
	cp.deployed = d
	cp.Namespace = d.static.Namespace
	return nil
}

// daemonSetPod waits until the DaemonSet controller has created the
// node's pod and the scheduler has bound it, and returns its name and UID.
func (cp *ControlPlane) daemonSetPod(ctx context.Context, node string) (name, uid string, err error) {
	ds := cp.deployed.static
	var sel []string
	for k, v := range ds.Spec.Selector.MatchLabels {
		sel = append(sel, k+"="+v)
	}
	slices.Sort(sel)
	err = WaitFor(ctx, "DaemonSet pod on "+node, func() error {
		out, err := cp.Kubectl(ctx, "", "get", "pods", "-n", ds.Namespace, "-l", strings.Join(sel, ","),
			"--field-selector", "spec.nodeName="+node, "-o", `jsonpath={range .items[*]}{.metadata.name} {.metadata.uid}{"\n"}{end}`)
		if err != nil {
			return err
		}
		lines := strings.Fields(out)
		if len(lines) != 2 {
			return fmt.Errorf("pods: %q", out)
		}
		name, uid = lines[0], lines[1]
		return nil
	})
	return name, uid, err
}

// ServiceAccountKubeconfig is the kubeconfig the node's driver and
// csi-provisioner use: the DaemonSet's ServiceAccount, with a token bound
// to the node's pod (or to the Node).
func (n *Node) ServiceAccountKubeconfig() string {
	return filepath.Join(n.dir, "serviceaccount.kubeconfig")
}

// serviceAccountKubeconfig writes a kubeconfig for the DaemonSet's
// ServiceAccount with a token from the TokenRequest API, bound to the node's
// DaemonSet pod (the kind of token the kubelet mounts into that pod) or,
// for a node without one, to the Node. It lasts an hour, longer than any
// test; the kubelet would refresh it, nothing here does.
func (cp *ControlPlane) serviceAccountKubeconfig(ctx context.Context, n *Node) (string, error) {
	ds := cp.deployed.static
	args := []string{"create", "token", ds.Spec.Template.Spec.ServiceAccountName, "-n", ds.Namespace, "--duration=1h"}
	if n.Pod != "" {
		args = append(args, "--bound-object-kind=Pod", "--bound-object-name="+n.Pod, "--bound-object-uid="+n.podUID)
	} else {
		args = append(args, "--bound-object-kind=Node", "--bound-object-name="+n.Name)
	}
	token, err := cp.Kubectl(ctx, "", args...)
	if err != nil {
		return "", err
	}
	return cp.kubeconfig(n.ServiceAccountKubeconfig(), ds.Spec.Template.Spec.ServiceAccountName,
		"token: "+strings.TrimSpace(token))
}
