package cluster

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"
)

// kubeletRoot is the kubelet's root directory as the manifests name it in
// hostPath volumes and in --kubelet-registration-path: the kubelet's
// default.
const kubeletRoot = "/var/lib/kubelet"

// root is the node's kubelet root directory: the real node's kubelet runs
// with --root-dir here, a kubelet-less node only keeps its plugin
// directory in it.
func (n *Node) root() string { return filepath.Join(n.dir, "kubelet") }

// hostPath is where a path of the machine, as the manifests name it, is for
// this node: the kubelet's root is the node's own directory (several
// kubelet-less nodes share one machine, each with its own socket and state);
// /dev, /sys and the rest are the machine's.
func (n *Node) hostPath(p string) string {
	if rest, ok := under(p, kubeletRoot); ok {
		return filepath.Join(n.root(), rest)
	}
	return p
}

// under reports whether p is dir or below it, and the rest of p.
func under(p, dir string) (string, bool) {
	p, dir = filepath.Clean(p), filepath.Clean(dir)
	if p == dir {
		return "", true
	}
	if strings.HasPrefix(p, dir+"/") {
		return strings.TrimPrefix(p, dir+"/"), true
	}
	return "", false
}

// containerToHost maps a path inside the container to the node, as the
// kubelet mounts it: through the container's volumeMount with the longest
// matching mountPath, to that volume's hostPath.
func containerToHost(spec *corev1.PodSpec, c *corev1.Container, n *Node, p string) (string, bool) {
	var best *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		if _, ok := under(p, m.MountPath); ok && (best == nil || len(m.MountPath) > len(best.MountPath)) {
			best = &c.VolumeMounts[i]
		}
	}
	if best == nil {
		return "", false
	}
	for _, v := range spec.Volumes {
		if v.Name == best.Name && v.HostPath != nil {
			rest, _ := under(p, best.MountPath)
			return filepath.Join(n.hostPath(v.HostPath.Path), rest), true
		}
	}
	return "", false
}

// mapPaths rewrites the arguments whose value is one path inside the
// container ("--flag=/path" or "--flag=unix:///path") to the node's path.
// Values that are not below a hostPath mount stay as they are.
func mapPaths(spec *corev1.PodSpec, c *corev1.Container, n *Node, args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		flag, value, ok := strings.Cut(a, "=")
		if !ok || !strings.HasPrefix(flag, "--") {
			continue
		}
		scheme := ""
		if strings.HasPrefix(value, "unix://") {
			scheme, value = "unix://", strings.TrimPrefix(value, "unix://")
		}
		if !strings.HasPrefix(value, "/") || strings.Contains(value, ",") {
			continue
		}
		if host, ok := containerToHost(spec, c, n, value); ok {
			out[i] = flag + "=" + scheme + host
		}
	}
	return out
}

// podEnv is the container's environment as the kubelet builds it for the
// node's pod: envFrom first, then env, field references resolved, ConfigMap
// and Secret references read from the data given (name -> key -> value),
// $(VAR) references expanded. It returns the variables and the same as
// NAME=value lines in their order.
func podEnv(c *corev1.Container, fields map[string]string, configMaps, secrets map[string]map[string]string) (map[string]string, []string, error) {
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	for _, from := range c.EnvFrom {
		var data map[string]string
		var ok, optional bool
		var name string
		switch {
		case from.ConfigMapRef != nil:
			name, optional = from.ConfigMapRef.Name, from.ConfigMapRef.Optional != nil && *from.ConfigMapRef.Optional
			data, ok = configMaps[name]
		case from.SecretRef != nil:
			name, optional = from.SecretRef.Name, from.SecretRef.Optional != nil && *from.SecretRef.Optional
			data, ok = secrets[name]
		}
		if !ok && !optional {
			return nil, nil, fmt.Errorf("container %s: envFrom %q: no such ConfigMap or Secret", c.Name, name)
		}
		for _, k := range slices.Sorted(maps.Keys(data)) {
			set(from.Prefix+k, data[k])
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			set(e.Name, expansion.Expand(e.Value, expansion.MappingFuncFor(vars)))
		case e.ValueFrom.FieldRef != nil:
			v, ok := fields[e.ValueFrom.FieldRef.FieldPath]
			if !ok {
				return nil, nil, fmt.Errorf("container %s: env %s: field %s not resolved by the suite", c.Name, e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
			set(e.Name, v)
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			v, ok := configMaps[ref.Name][ref.Key]
			if !ok {
				return nil, nil, fmt.Errorf("container %s: env %s: no key %q in ConfigMap %q", c.Name, e.Name, ref.Key, ref.Name)
			}
			set(e.Name, v)
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			v, ok := secrets[ref.Name][ref.Key]
			if !ok {
				return nil, nil, fmt.Errorf("container %s: env %s: no key %q in Secret %q", c.Name, e.Name, ref.Key, ref.Name)
			}
			set(e.Name, v)
		default:
			return nil, nil, fmt.Errorf("container %s: env %s: source not resolved by the suite", c.Name, e.Name)
		}
	}
	lines := make([]string, len(order))
	for i, k := range order {
		lines[i] = k + "=" + vars[k]
	}
	return vars, lines, nil
}

// expandArg expands $(VAR) references in a container argument as the
// kubelet does: defined variables are replaced, $$ is a $, the rest stays.
func expandArg(a string, vars map[string]string) string {
	return expansion.Expand(a, expansion.MappingFuncFor(vars))
}

// setFlag sets --name=value, in place of the container's own value if it
// has one.
func setFlag(args []string, name, value string) []string {
	for i, a := range args {
		if a == "--"+name || strings.HasPrefix(a, "--"+name+"=") {
			args[i] = "--" + name + "=" + value
			return args
		}
	}
	return append(args, "--"+name+"="+value)
}

// hostSide is what the harness knows of a node when it starts one of the
// node's containers as a host process.
type hostSide struct {
	metadataURL, ecsURL string // the node's fake ECS, "" for none
	kubeconfig          string // the ServiceAccount kubeconfig
}

// hostProcess is how the suite runs a container of the node's DaemonSet pod
// as a process on the machine: the container's args and environment as the
// kubelet gives them, and then every change the harness makes, all here,
// each with its reason. Nodes whose disks come from the fake ECS run the ecs
// overlay's DaemonSet, the others the static overlay's.
func (cp *ControlPlane) hostProcess(n *Node, container string, h hostSide) (args, env []string, err error) {
	ds := cp.deployed.static
	if h.metadataURL != "" {
		ds = cp.deployed.ecs
	}
	c, err := Container(ds, container)
	if err != nil {
		return nil, nil, err
	}
	configMaps := map[string]map[string]string{}
	for name, data := range cp.deployed.configMaps {
		configMaps[name] = maps.Clone(data)
		// Harness: the devices ConfigMap names this node's loop devices.
		// The shipped value is a placeholder for the operator to replace
		// with the node's local disks; these are the node's disks here.
		if _, ok := data["devices"]; ok {
			configMaps[name]["devices"] = strings.Join(n.Loops, ",")
		}
	}
	// Harness: every Secret the container reads holds keys the fake ECS
	// takes. The ecs overlay reads its credentials from an optional Secret
	// and otherwise from the instance's RAM role, which no machine here has.
	secrets := fakeECSSecrets(c)
	fields := map[string]string{"spec.nodeName": n.Name, "metadata.namespace": ds.Namespace, "metadata.name": n.Pod}
	vars, env, err := podEnv(c, fields, configMaps, secrets)
	if err != nil {
		return nil, nil, err
	}
	args = make([]string, len(c.Args))
	for i, a := range c.Args {
		args[i] = expandArg(a, vars)
	}
	// Harness: container paths are the node's paths, through the
	// container's own volumeMounts and hostPath volumes, with the kubelet's
	// root directory per node (see hostPath): /csi/csi.sock is the socket in
	// the node's plugin directory, the state directory is the node's own.
	args = mapPaths(&ds.Spec.Template.Spec, c, n, args)

	switch container {
	case "driver":
		// Harness: a host process has no in-cluster configuration; its
		// kubeconfig carries a TokenRequest token of the DaemonSet's
		// ServiceAccount, bound to the node's DaemonSet pod (or, on a real
		// node, to the Node): the API server knows the token's node.
		args = setFlag(args, "kubeconfig", h.kubeconfig)
		// Harness: many nodes' drivers share the machine's network, so
		// each serves its metrics on a port of its own (the log says
		// which; see Node.MetricsURL), on the node's address.
		if slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--metrics-address=") }) {
			host := "127.0.0.1"
			if n.real != nil && n.real.net != nil {
				host = n.real.net.ip.String()
			}
			args = setFlag(args, "metrics-address", host+":0")
		}
		if !cp.cfg.Shipped {
			// Harness: the tests change disks under the driver and wait for
			// the LocalDisks to follow; the shipped rescan is every 30 s.
			args = setFlag(args, "disk-rescan-interval", "3s")
		}
		if h.metadataURL != "" {
			// Harness: the instance metadata server and the ECS OpenAPI
			// are the node's fake ECS on loopback.
			args = setFlag(args, "metadata-endpoint", h.metadataURL)
			args = setFlag(args, "ecs-endpoint", h.ecsURL)
			// Harness: the node's disks are loop devices, which the ecs
			// source's default device globs (/dev/vd*, /dev/nvme*n*,
			// /dev/sd*, /dev/xvd*) do not cover, while they do cover this
			// machine's own disks. The fake ECS still decides which of
			// them are local disks, by serial.
			args = setFlag(args, "devices", strings.Join(n.Loops, ","))
		}
	case "csi-provisioner":
		// Harness: a host process has no in-cluster configuration; its
		// kubeconfig carries a TokenRequest token of the DaemonSet's
		// ServiceAccount, bound to the node's DaemonSet pod.
		args = setFlag(args, "kubeconfig", h.kubeconfig)
		if !cp.cfg.Shipped {
			// Harness: capacity is polled every few seconds (default one
			// minute): the tests wait for capacity to follow a delete.
			poll := cp.cfg.CapacityPoll
			if poll == 0 {
				poll = 5 * time.Second
			}
			args = setFlag(args, "capacity-poll-interval", poll.String())
			// Harness: one apiserver takes the claims of a whole test at once
			// (bursts of several StatefulSets); the default 5 QPS, burst 10,
			// would make the tests measure the client's rate limit.
			args = setFlag(args, "kube-api-qps", "50")
			args = setFlag(args, "kube-api-burst", "100")
		}
		if n.Pod == "" {
			// Harness: the real node runs no DaemonSet pod (it is not
			// labelled for one, see AddRealNode), so there is no pod
			// to look up the CSIStorageCapacity objects' owner from.
			args = setFlag(args, "capacity-ownerref-level", strconv.Itoa(-1))
		}
		// Harness: settings under measurement (Config.ProvisionerArgs).
		for _, a := range cp.cfg.ProvisionerArgs {
			name, value, hasValue := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			if !hasValue {
				args = slices.DeleteFunc(args, func(x string) bool { return x == "--"+name || strings.HasPrefix(x, "--"+name+"=") })
				args = append(args, "--"+name)
				continue
			}
			args = setFlag(args, name, value)
		}
	}
	return args, env, nil
}

// fakeECSSecrets gives every Secret the container reads keys the fake ECS
// takes.
func fakeECSSecrets(c *corev1.Container) map[string]map[string]string {
	secrets := map[string]map[string]string{}
	for _, from := range c.EnvFrom {
		if from.SecretRef != nil {
			secrets[from.SecretRef.Name] = map[string]string{"ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIe2e", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "e2e-secret"}
		}
	}
	return secrets
}
