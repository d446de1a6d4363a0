use super::*;
use crate::gguf::{GgufWriter, Value};
use crate::test_support;

fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
    pairs
        .iter()
        .map(|(r, c)| ChatMessage::new(*r, *c))
        .collect()
}

#[test]
fn golden_chat_cases_render_exactly() {
    let tpl = ChatTemplate::from_gguf(&test_support::default_model()).unwrap();
    let golden = test_support::golden();
    let mut n = 0;
    for case in golden.cases.iter().filter(|c| c.kind == "chat") {
        let messages = case.messages.as_ref().expect("chat case has messages");
        let want = case.rendered.as_ref().expect("chat case has rendered");
        assert_eq!(&tpl.render(messages, true).unwrap(), want);
        n += 1;
    }
    assert!(n > 0, "golden file has no chat cases");
}

#[test]
fn generation_prompt_is_only_added_when_asked() {
    let tpl = ChatTemplate::from_gguf(&test_support::default_model()).unwrap();
    let m = msgs(&[("user", "Hi")]);
    let with = tpl.render(&m, true).unwrap();
    let without = tpl.render(&m, false).unwrap();
    assert!(with.ends_with("<|im_start|>assistant\n"));
    assert!(!without.ends_with("<|im_start|>assistant\n"));
    assert!(with.starts_with(&without));
}

#[test]
fn file_without_template_falls_back_to_chatml() {
    let mut w = GgufWriter::new();
    w.meta(
        "tokenizer.ggml.tokens",
        Value::Array(vec![
            Value::String("<s>".into()),
            Value::String("</s>".into()),
        ]),
    );
    w.meta("tokenizer.ggml.bos_token_id", Value::U32(0));
    w.meta("tokenizer.ggml.eos_token_id", Value::U32(1));
    let f = crate::gguf::GgufFile::from_vec(w.to_bytes()).unwrap();
    let tpl = ChatTemplate::from_gguf(&f).unwrap();
    let out = tpl
        .render(&msgs(&[("system", "S"), ("user", "U")]), true)
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(tpl.bos, "<s>");
    assert_eq!(tpl.eos, "</s>");
}

#[test]
fn templates_get_bos_eos_and_python_string_methods() {
    let src = "{{ bos_token }}{% for m in messages %}{% if m.content.startswith('x') %}X{% endif %}[{{ m.content.strip() | upper }}]{% endfor %}{{ eos_token }}{% if tools is none %}!{% endif %}";
    let tpl = ChatTemplate::from_source(src, "<s>", "</s>").unwrap();
    let out = tpl
        .render(&msgs(&[("user", "  xa  "), ("user", "b")]), false)
        .unwrap();
    assert_eq!(out, "<s>[XA][B]</s>!");
    let out = tpl.render(&msgs(&[("user", "xa")]), false).unwrap();
    assert_eq!(out, "<s>X[XA]</s>!");
}

#[test]
fn trim_and_lstrip_blocks_match_transformers() {
    let src = "{% for m in messages %}\n    {{ m.role }}\n{% endfor %}";
    let tpl = ChatTemplate::from_source(src, "", "").unwrap();
    let out = tpl.render(&msgs(&[("a", ""), ("b", "")]), false).unwrap();
    assert_eq!(out, "    a\n    b\n");
}

#[test]
fn raise_exception_is_a_template_error() {
    let src = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok";
    let tpl = ChatTemplate::from_source(src, "", "").unwrap();
    assert_eq!(tpl.render(&msgs(&[("user", "x")]), false).unwrap(), "ok");
    let err = tpl.render(&msgs(&[("system", "x")]), false).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Template);
    assert!(err.msg.contains("first must be user"), "{}", err.msg);
}

#[test]
fn template_that_does_not_parse_is_an_error() {
    let err = ChatTemplate::from_source("{% for m in messages %}", "", "").unwrap_err();
    assert_eq!(err.kind, ErrorKind::Template);
}

#[test]
fn strftime_now_renders_a_date() {
    let tpl = ChatTemplate::from_source("{{ strftime_now('%Y-%m-%d') }}", "", "").unwrap();
    let out = tpl.render(&[], false).unwrap();
    let parts: Vec<&str> = out.split('-').collect();
    assert_eq!(parts.len(), 3, "{out}");
    assert!(parts[0].parse::<u32>().unwrap() >= 2024);
}

#[test]
fn strftime_formats_known_instants() {
    assert_eq!(
        time::strftime("%Y-%m-%d %H:%M:%S %A", 0),
        "1970-01-01 00:00:00 Thursday"
    );
    // 2000-02-29 12:34:56 UTC, a leap day.
    assert_eq!(
        time::strftime("%d %B %Y %j %a %b %y %% %Q", 951_827_696),
        "29 February 2000 060 Tue Feb 00 % %Q"
    );
    assert_eq!(time::strftime("%Y-%m-%d", 1_735_689_599), "2024-12-31");
}

#[test]
fn chat_message_round_trips_through_json() {
    let m = ChatMessage::new("user", "hé");
    let s = serde_json::to_string(&m).unwrap();
    assert_eq!(serde_json::from_str::<ChatMessage>(&s).unwrap(), m);
}

#[test]
fn chat_template_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
}
