// validate-manifests checks what `helm template deploy/helm/evalstream` renders, without a
// cluster: scripts/check-deploy.sh pipes each rendering into it.
//
// Every document is decoded strictly into its Go type as the API server knows it: the Kubernetes
// API types (client-go's scheme), the Prometheus Operator's ServiceMonitor and PrometheusRule and
// KEDA's ScaledObject and TriggerAuthentication, at the versions go.mod pins. Strict decoding
// rejects an unknown or duplicated field and a value of the wrong type, which is what a schema
// check catches; a kind none of these types knows is an error too. Then the objects are checked
// against each other, as the cluster would only show at run time: selectors select the pods,
// named ports and volumes exist, the configuration's listen addresses are the container's ports,
// every ${env:NAME} without a default is set, the grace period outlasts the drain, the KEDA
// trigger reads the configured group and topics, and the PrometheusRule holds exactly the rules
// of deploy/prometheus/evalstream.rules.yaml.
//
//	validate-manifests [-rules FILE] [-expect Kind,Kind] [-extract DIR] < rendered.yaml
//
// -extract writes the configuration (DIR/config/evalstream.yaml), the scripts (DIR/scripts/) and
// the container's environment (DIR/env, NAME=VALUE lines, a placeholder for each Secret) so that
// `evalstream validate` can check the configuration as the worker would read it.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// rendered is what one rendering holds, by kind.
type rendered struct {
	deployments     []*appsv1.Deployment
	services        []*corev1.Service
	configMaps      map[string]*corev1.ConfigMap
	secrets         map[string]*corev1.Secret
	pdbs            []*policyv1.PodDisruptionBudget
	serviceMonitors []*monitoringv1.ServiceMonitor
	rules           []*monitoringv1.PrometheusRule
	scaledObjects   []*kedav1alpha1.ScaledObject
	triggerAuths    map[string]*kedav1alpha1.TriggerAuthentication
	kinds           map[string]int

	configText string            // the configuration file the container reads
	scripts    *corev1.ConfigMap // the ConfigMap mounted at WORKDIR/scripts
	env        map[string]string // the container's environment, Secrets as placeholders
}

type problems []string

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

func main() {
	rulesFile := flag.String("rules", "", "the alert rules file the PrometheusRule must hold")
	expect := flag.String("expect", "", "kinds that must be rendered, comma separated")
	extract := flag.String("extract", "", "write the configuration, scripts and environment here")
	flag.Parse()

	var errs problems
	r, err := decode(os.Stdin, &errs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "validate-manifests:", err)
		os.Exit(1)
	}
	for _, kind := range strings.Split(*expect, ",") {
		if kind != "" && r.kinds[kind] == 0 {
			errs.add("%s: expected in the rendering, not there", kind)
		}
	}
	config := r.check(&errs, *rulesFile)
	if *extract != "" && config != nil && len(errs) == 0 {
		if err := r.extract(*extract); err != nil {
			errs.add("extract: %v", err)
		}
	}
	if len(errs) > 0 {
		for _, e := range errs {
			fmt.Fprintln(os.Stderr, "validate-manifests:", e)
		}
		os.Exit(1)
	}
	names := make([]string, 0, len(r.kinds))
	for kind, n := range r.kinds {
		names = append(names, fmt.Sprintf("%d %s", n, kind))
	}
	sort.Strings(names)
	fmt.Printf("valid: %s\n", strings.Join(names, ", "))
}

func newScheme() *runtime.Scheme {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		clientgoscheme.AddToScheme, monitoringv1.AddToScheme, kedav1alpha1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	return scheme
}

// decode reads every document of the stream into its type, strictly.
func decode(in io.Reader, errs *problems) (*rendered, error) {
	decoder := serializer.NewCodecFactory(newScheme(), serializer.EnableStrict).UniversalDeserializer()
	r := &rendered{
		configMaps:   map[string]*corev1.ConfigMap{},
		secrets:      map[string]*corev1.Secret{},
		triggerAuths: map[string]*kedav1alpha1.TriggerAuthentication{},
		kinds:        map[string]int{},
	}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(in))
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		source := "a document"
		if m := regexp.MustCompile(`(?m)^# Source: (.+)$`).FindSubmatch(doc); m != nil {
			source = string(m[1])
		}
		json, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			errs.add("%s: %v", source, err)
			continue
		}
		if string(bytes.TrimSpace(json)) == "null" {
			continue // comments only
		}
		obj, gvk, err := decoder.Decode(json, nil, nil)
		if err != nil {
			errs.add("%s: %v", source, err)
			continue
		}
		r.kinds[gvk.Kind]++
		meta, ok := obj.(metav1.Object)
		if !ok {
			errs.add("%s: %s has no metadata", source, gvk.Kind)
			continue
		}
		checkMeta(source, gvk.Kind, meta, errs)
		switch o := obj.(type) {
		case *appsv1.Deployment:
			r.deployments = append(r.deployments, o)
		case *corev1.Service:
			r.services = append(r.services, o)
		case *corev1.ConfigMap:
			r.configMaps[o.Name] = o
		case *corev1.Secret:
			r.secrets[o.Name] = o
		case *corev1.ServiceAccount:
		case *policyv1.PodDisruptionBudget:
			r.pdbs = append(r.pdbs, o)
		case *monitoringv1.ServiceMonitor:
			r.serviceMonitors = append(r.serviceMonitors, o)
		case *monitoringv1.PrometheusRule:
			r.rules = append(r.rules, o)
		case *kedav1alpha1.ScaledObject:
			r.scaledObjects = append(r.scaledObjects, o)
		case *kedav1alpha1.TriggerAuthentication:
			r.triggerAuths[o.Name] = o
		default:
			errs.add("%s: %s is decoded but not checked here: add it to validate-manifests", source, gvk.Kind)
		}
	}
	return r, nil
}

func checkMeta(source, kind string, meta metav1.Object, errs *problems) {
	for _, msg := range validation.IsDNS1123Subdomain(meta.GetName()) {
		errs.add("%s: %s name %q: %s", source, kind, meta.GetName(), msg)
	}
	for k, v := range meta.GetLabels() {
		for _, msg := range validation.IsQualifiedName(k) {
			errs.add("%s: label key %q: %s", source, k, msg)
		}
		for _, msg := range validation.IsValidLabelValue(v) {
			errs.add("%s: label %s=%q: %s", source, k, v, msg)
		}
	}
}

// check runs the cross-object checks; it returns the configuration file, decoded.
func (r *rendered) check(errs *problems, rulesFile string) map[string]any {
	if len(r.deployments) != 1 {
		errs.add("expected one Deployment, found %d", len(r.deployments))
		return nil
	}
	d := r.deployments[0]
	pod := d.Spec.Template
	podLabels := labels.Set(pod.Labels)
	selector, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || !selector.Matches(podLabels) {
		errs.add("Deployment %s: its selector does not select its pods' labels (%v)", d.Name, err)
	}
	if len(pod.Spec.Containers) != 1 {
		errs.add("Deployment %s: expected one container", d.Name)
		return nil
	}
	c := pod.Spec.Containers[0]
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for what, probe := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if probe == nil || probe.HTTPGet == nil {
			errs.add("container %s: no HTTP %s probe", c.Name, what)
			continue
		}
		if _, ok := ports[probe.HTTPGet.Port.StrVal]; !ok {
			errs.add("container %s: the %s probe's port %q is not a container port", c.Name, what, probe.HTTPGet.Port.String())
		}
	}
	if c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path != "/healthz" {
		errs.add("container %s: the liveness probe reads %s, not /healthz", c.Name, c.LivenessProbe.HTTPGet.Path)
	}
	if c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil && c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		errs.add("container %s: the readiness probe reads %s, not /readyz", c.Name, c.ReadinessProbe.HTTPGet.Path)
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		volumes[v.Name] = v
		if v.ConfigMap != nil && r.configMaps[v.ConfigMap.Name] == nil {
			errs.add("volume %s: ConfigMap %s is not rendered", v.Name, v.ConfigMap.Name)
		}
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
		if _, ok := volumes[m.Name]; !ok {
			errs.add("container %s: mount %s names no volume %q", c.Name, m.MountPath, m.Name)
		}
		if m.SubPath != "" && volumes[m.Name].ConfigMap != nil {
			errs.add("container %s: mount %s uses subPath: the kubelet never updates it, so scripts would not reload", c.Name, m.MountPath)
		}
	}
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			env[e.Name] = "secret-" + strings.ToLower(e.Name) + "-placeholder"
			if s, ok := r.secrets[ref.Name]; ok {
				if _, has := s.Data[ref.Key]; !has {
					if _, has := s.StringData[ref.Key]; !has {
						errs.add("env %s: Secret %s has no key %q", e.Name, ref.Name, ref.Key)
					}
				}
			}
		case e.ValueFrom != nil:
			env[e.Name] = "placeholder"
		default:
			env[e.Name] = e.Value
		}
	}

	// The configuration the container reads.
	args := strings.Join(c.Args, " ")
	m := regexp.MustCompile(`--config (\S+)`).FindStringSubmatch(args)
	if m == nil {
		errs.add("container %s: no --config in its arguments %q", c.Name, args)
		return nil
	}
	dir, file := filepath.Dir(m[1]), filepath.Base(m[1])
	mount, ok := mounts[dir]
	if !ok || volumes[mount.Name].ConfigMap == nil {
		errs.add("container %s: %s is not a mounted ConfigMap", c.Name, dir)
		return nil
	}
	cm := r.configMaps[volumes[mount.Name].ConfigMap.Name]
	if cm == nil || cm.Data[file] == "" {
		errs.add("the configuration %s is not in the ConfigMap mounted at %s", file, dir)
		return nil
	}
	r.configText = cm.Data[file]
	var config map[string]any
	if err := yaml.Unmarshal([]byte(cm.Data[file]), &config); err != nil {
		errs.add("%s: %v", file, err)
		return nil
	}
	for _, ref := range regexp.MustCompile(`\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}`).FindAllStringSubmatch(cm.Data[file], -1) {
		if _, ok := env[ref[1]]; !ok {
			errs.add("%s reads ${env:%s}, which the container's environment does not set", file, ref[1])
		}
	}
	r.env = env
	if sm, ok := mounts[filepath.Join(c.WorkingDir, "scripts")]; ok && volumes[sm.Name].ConfigMap != nil {
		r.scripts = r.configMaps[volumes[sm.Name].ConfigMap.Name]
	} else {
		errs.add("container %s: no ConfigMap mounted at %s/scripts", c.Name, c.WorkingDir)
	}

	// The addresses it listens on are the container's ports.
	listen := func(what, addr, port string) {
		_, p, err := net.SplitHostPort(addr)
		n, _ := strconv.Atoi(p)
		if err != nil || ports[port] == 0 || int32(n) != ports[port] {
			errs.add("%s listens on %q, not on the container port %s (%d)", what, addr, port, ports[port])
		}
	}
	listen("telemetry.metrics.listen", str(dig(config, "telemetry", "metrics", "listen")), "metrics")
	otlpProtocols, _ := dig(config, "receivers", "otlp", "protocols").(map[string]any)
	for protocol, port := range map[string]string{"grpc": "otlp-grpc", "http": "otlp-http"} {
		if p, ok := otlpProtocols[protocol]; ok {
			listen("receivers.otlp.protocols."+protocol+".endpoint", str(dig(p, "endpoint")), port)
		} else if _, ok := ports[port]; ok {
			errs.add("container port %s is open but the OTLP receiver has no %s protocol", port, protocol)
		}
	}
	guard, _ := dig(config, "guard").(map[string]any)
	for protocol, port := range map[string]string{"grpc": "guard-grpc", "http": "guard-http"} {
		if p, ok := guard[protocol]; ok {
			listen("guard."+protocol+".endpoint", str(dig(p, "endpoint")), port)
		} else if _, ok := ports[port]; ok {
			errs.add("container port %s is open but the guard API has no %s listener", port, protocol)
		}
	}

	// The grace period outlasts the drain.
	drain := 30.0
	if v, ok := dig(config, "receivers", "kafka", "drain_timeout_seconds").(float64); ok {
		drain = v
	}
	grace := int64(30)
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = *pod.Spec.TerminationGracePeriodSeconds
	}
	preStop := int64(0)
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
		preStop = c.Lifecycle.PreStop.Sleep.Seconds
	}
	if float64(grace) <= float64(preStop)+drain {
		errs.add("terminationGracePeriodSeconds %d is not longer than the preStop sleep (%d s) and drain_timeout_seconds (%g)", grace, preStop, drain)
	}

	// The Service, the disruption budget and the ServiceMonitor find the pods and ports.
	for _, s := range r.services {
		if !labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels) || len(s.Spec.Selector) == 0 {
			errs.add("Service %s does not select the Deployment's pods", s.Name)
		}
		for _, p := range s.Spec.Ports {
			if _, ok := ports[p.TargetPort.StrVal]; !ok {
				errs.add("Service %s: target port %q is not a container port", s.Name, p.TargetPort.String())
			}
		}
	}
	if len(r.services) != 1 {
		errs.add("expected one Service, found %d", len(r.services))
	}
	for _, p := range r.pdbs {
		sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
		if err != nil || !sel.Matches(podLabels) {
			errs.add("PodDisruptionBudget %s does not select the Deployment's pods", p.Name)
		}
	}
	for _, sm := range r.serviceMonitors {
		sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
		found := false
		for _, s := range r.services {
			if err == nil && sel.Matches(labels.Set(s.Labels)) {
				for _, ep := range sm.Spec.Endpoints {
					for _, p := range s.Spec.Ports {
						if ep.Port == p.Name {
							found = true
						}
					}
				}
			}
		}
		if !found {
			errs.add("ServiceMonitor %s selects no Service port", sm.Name)
		}
	}

	// The PrometheusRule is the rules file.
	if len(r.rules) > 0 {
		if rulesFile == "" {
			errs.add("a PrometheusRule is rendered: give -rules to compare it with")
		} else if text, err := os.ReadFile(rulesFile); err != nil {
			errs.add("%v", err)
		} else {
			var want monitoringv1.PrometheusRuleSpec
			if err := yaml.UnmarshalStrict(text, &want); err != nil {
				errs.add("%s does not decode as a PrometheusRule's spec: %v", rulesFile, err)
			}
			for _, rule := range r.rules {
				if !reflect.DeepEqual(rule.Spec, want) {
					errs.add("PrometheusRule %s does not hold the rules of %s", rule.Name, rulesFile)
				}
			}
		}
	}

	// KEDA scales this Deployment on the configured group and topics.
	for _, so := range r.scaledObjects {
		if so.Spec.ScaleTargetRef == nil || so.Spec.ScaleTargetRef.Name != d.Name {
			errs.add("ScaledObject %s does not scale Deployment %s", so.Name, d.Name)
		}
		if d.Spec.Replicas != nil {
			errs.add("Deployment %s sets replicas while ScaledObject %s scales it", d.Name, so.Name)
		}
		group := str(dig(config, "receivers", "kafka", "group_id"))
		if group == "" {
			group = "evalstream"
		}
		topics := map[string]bool{}
		for _, t := range asList(dig(config, "receivers", "kafka", "topics")) {
			topics[str(t)] = true
		}
		if len(topics) == 0 {
			topics["otlp_spans"] = true
		}
		for _, t := range so.Spec.Triggers {
			if t.Type != "kafka" {
				continue
			}
			if t.Metadata["consumerGroup"] != group {
				errs.add("ScaledObject %s: consumerGroup %q, the configuration's group is %q", so.Name, t.Metadata["consumerGroup"], group)
			}
			if !topics[t.Metadata["topic"]] {
				errs.add("ScaledObject %s: topic %q is not one the configuration reads", so.Name, t.Metadata["topic"])
			}
			delete(topics, t.Metadata["topic"])
			if t.AuthenticationRef != nil && r.triggerAuths[t.AuthenticationRef.Name] == nil {
				errs.add("ScaledObject %s: TriggerAuthentication %s is not rendered", so.Name, t.AuthenticationRef.Name)
			}
		}
		for t := range topics {
			errs.add("ScaledObject %s: no trigger on topic %s", so.Name, t)
		}
	}
	return config
}

func (r *rendered) extract(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "config"), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "scripts"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "config", "evalstream.yaml"), []byte(r.configText), 0o644); err != nil {
		return err
	}
	if r.scripts != nil {
		for name, text := range r.scripts.Data {
			if err := os.WriteFile(filepath.Join(dir, "scripts", name), []byte(text), 0o644); err != nil {
				return err
			}
		}
	}
	var lines []string
	for k, v := range r.env {
		lines = append(lines, k+"="+v)
	}
	sort.Strings(lines)
	return os.WriteFile(filepath.Join(dir, "env"), []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}

func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}
