package cluster

import (
	"encoding/json"
	"reflect"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func testDaemonSet() *appsv1.DaemonSet {
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "ds", Namespace: "ns"},
		Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name: "driver",
				Args: []string{"--endpoint=unix:///csi/csi.sock", "--state-dir=/var/lib/kubelet/plugins/d/state",
					"--node-id=$(NODE_NAME)", "--devices=$(DEVICES)", "--kept=$$(NODE_NAME)", "--v=2"},
				Env: []corev1.EnvVar{
					{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
					{Name: "DEVICES", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
						LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}, Key: "devices"}}},
					{Name: "WHERE", Value: "$(NODE_NAME)/$(POD)"},
				},
				VolumeMounts: []corev1.VolumeMount{{Name: "plugin", MountPath: "/csi"}, {Name: "kubelet", MountPath: "/var/lib/kubelet"}, {Name: "dev", MountPath: "/dev"}},
			}},
			Volumes: []corev1.Volume{
				{Name: "plugin", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/lib/kubelet/plugins/d"}}},
				{Name: "kubelet", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/lib/kubelet"}}},
				{Name: "dev", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/dev"}}},
			},
		}}},
	}
}

// TestHostProcessArgs: the container's args as the kubelet expands them,
// container paths mapped to the node's directories through the hostPath
// mounts; /dev stays the machine's.
func TestHostProcessArgs(t *testing.T) {
	ds := testDaemonSet()
	c := &ds.Spec.Template.Spec.Containers[0]
	n := &Node{Name: "fake-1", dir: "/tmp/c/nodes/fake-1", Pod: "ds-abcde"}
	vars, env, err := podEnv(c, map[string]string{"spec.nodeName": n.Name, "metadata.namespace": ds.Namespace, "metadata.name": n.Pod}, map[string]map[string]string{"cm": {"devices": "/dev/loop7,/dev/loop8"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantEnv := []string{"NODE_NAME=fake-1", "DEVICES=/dev/loop7,/dev/loop8", "WHERE=fake-1/$(POD)"}
	if !reflect.DeepEqual(env, wantEnv) {
		t.Errorf("env %q, want %q", env, wantEnv)
	}
	var args []string
	for _, a := range c.Args {
		args = append(args, expandArg(a, vars))
	}
	got := mapPaths(&ds.Spec.Template.Spec, c, n, args)
	want := []string{"--endpoint=unix:///tmp/c/nodes/fake-1/kubelet/plugins/d/csi.sock",
		"--state-dir=/tmp/c/nodes/fake-1/kubelet/plugins/d/state", "--node-id=fake-1",
		"--devices=/dev/loop7,/dev/loop8", "--kept=$(NODE_NAME)", "--v=2"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("args\n%q\nwant\n%q", got, want)
	}
	if _, _, err := podEnv(c, map[string]string{"spec.nodeName": n.Name, "metadata.namespace": ds.Namespace, "metadata.name": n.Pod}, nil, nil); err == nil {
		t.Error("a missing ConfigMap key went unnoticed")
	}
}

func TestDropRule(t *testing.T) {
	rendered := func() *Rendered {
		var obj map[string]any
		_ = json.Unmarshal([]byte(`{"kind": "ClusterRole", "metadata": {"name": "p"}, "rules": [
			{"apiGroups": [""], "resources": ["persistentvolumes", "nodes"], "verbs": ["get", "create"]},
			{"apiGroups": ["storage.k8s.io"], "resources": ["csinodes"], "verbs": ["get"]}]}`), &obj)
		return &Rendered{Objects: []map[string]any{obj}}
	}
	rules := func(r *Rendered) string {
		b, _ := json.Marshal(r.Objects[0]["rules"])
		return string(b)
	}
	for _, tc := range []struct{ spec, want string }{
		{"ClusterRole/p/persistentvolumes/create", `[{"apiGroups":[""],"resources":["nodes"],"verbs":["get","create"]},` +
			`{"apiGroups":[""],"resources":["persistentvolumes"],"verbs":["get"]},{"apiGroups":["storage.k8s.io"],"resources":["csinodes"],"verbs":["get"]}]`},
		{"ClusterRole/p/csinodes", `[{"apiGroups":[""],"resources":["persistentvolumes","nodes"],"verbs":["get","create"]}]`},
	} {
		r := rendered()
		if err := r.DropRule(tc.spec); err != nil {
			t.Fatalf("%s: %v", tc.spec, err)
		}
		if got := rules(r); got != tc.want {
			t.Errorf("%s: rules\n%s\nwant\n%s", tc.spec, got, tc.want)
		}
	}
	for _, spec := range []string{"ClusterRole/p/pods", "Role/p/nodes", "ClusterRole/q/nodes", "ClusterRole/p/csinodes/create", "ClusterRole/p"} {
		if err := rendered().DropRule(spec); err == nil {
			t.Errorf("%s: dropped nothing and said nothing", spec)
		}
	}
}
