// Command probe checks what the end-to-end tests cannot check with Rust alone, reading stdin:
//
//   - by default, one Kubernetes object as JSON: prints, tab-separated, the status and message
//     that sigs.k8s.io/cli-utils' kstatus computes for it (the rules Flux's health checks follow);
//   - with -lua FILE, the same object through FILE as an Argo CD resource health check (Lua, the
//     object as the global `obj`, returning a table with `status` and `message`): prints those;
//   - with -promql, PromQL expressions separated by NUL bytes: prints, per expression, "ok" and
//     the metric names it selects, or the parser's error.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/prometheus/prometheus/promql/parser"
	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(2)
}

func main() {
	script := flag.String("lua", "", "an Argo CD health check script to run instead of kstatus")
	promql := flag.Bool("promql", false, "parse PromQL expressions instead")
	flag.Parse()
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	if *promql {
		parsePromQL(data)
		return
	}
	if *script != "" {
		runLua(*script, data)
		return
	}
	object := &unstructured.Unstructured{}
	// Kubernetes' own JSON reading keeps integers integers, as kstatus expects.
	if err := object.UnmarshalJSON(data); err != nil {
		fail(err)
	}
	result, err := status.Compute(object)
	if err != nil {
		fail(err)
	}
	fmt.Printf("%s\t%s\n", result.Status, result.Message)
}

// runLua evaluates a health script the way Argo CD does: the object as a Lua table in `obj`,
// the script's return value read as {status, message}.
func runLua(path string, data []byte) {
	var object interface{}
	if err := json.Unmarshal(data, &object); err != nil {
		fail(err)
	}
	state := lua.NewState()
	defer state.Close()
	state.SetGlobal("obj", toLua(state, object))
	if err := state.DoFile(path); err != nil {
		fail(err)
	}
	result, ok := state.Get(-1).(*lua.LTable)
	if !ok {
		fail(fmt.Errorf("%s returned no table", path))
	}
	fmt.Printf("%s\t%s\n", lua.LVAsString(result.RawGetString("status")), lua.LVAsString(result.RawGetString("message")))
}

// parsePromQL parses NUL-separated expressions and prints, one line each, "ok" and the metric
// names the expression selects, or "error" and why.
func parsePromQL(data []byte) {
	for _, expr := range strings.Split(string(data), "\x00") {
		if strings.TrimSpace(expr) == "" {
			continue
		}
		parsed, err := parser.ParseExpr(expr)
		if err != nil {
			fmt.Printf("error\t%s\n", strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		var names []string
		parser.Inspect(parsed, func(node parser.Node, _ []parser.Node) error {
			if selector, ok := node.(*parser.VectorSelector); ok {
				names = append(names, selector.Name)
			}
			return nil
		})
		fmt.Printf("ok\t%s\n", strings.Join(names, " "))
	}
}

func toLua(state *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case map[string]interface{}:
		table := state.NewTable()
		for key, item := range v {
			table.RawSetString(key, toLua(state, item))
		}
		return table
	case []interface{}:
		table := state.NewTable()
		for _, item := range v {
			table.Append(toLua(state, item))
		}
		return table
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case bool:
		return lua.LBool(v)
	default:
		return lua.LNil
	}
}
