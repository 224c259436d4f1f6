// Renders an Ollama TEMPLATE with Go's text/template, the engine Ollama uses, feeding it the
// data Ollama builds for a chat: the Modelfile SYSTEM as a first system message when the chat
// starts without one, consecutive same-role messages merged with a blank line, all system
// messages joined into .System, and .Messages with .Role/.Content.
//
// stdin: {"template": "...", "system": "...", "chats": [[{"role": "...", "content": "..."}]]}
// stdout: a JSON list with one rendered prompt per chat.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Input struct {
	Template string      `json:"template"`
	System   string      `json:"system"`
	Chats    [][]Message `json:"chats"`
}

func prepare(msgs []Message, defaultSystem string) (string, []*Message) {
	if defaultSystem != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
		msgs = append([]Message{{Role: "system", Content: defaultSystem}}, msgs...)
	}
	var system []string
	var merged []*Message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(merged) > 0 && merged[len(merged)-1].Role == m.Role {
			merged[len(merged)-1].Content += "\n\n" + m.Content
		} else {
			merged = append(merged, &m)
		}
	}
	return strings.Join(system, "\n\n"), merged
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("").Parse(in.Template))
	out := []string{}
	for _, chat := range in.Chats {
		system, msgs := prepare(chat, in.System)
		var b strings.Builder
		err := tmpl.Execute(&b, map[string]any{
			"System": system, "Messages": msgs, "Prompt": "", "Response": "", "Tools": nil,
		})
		if err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
