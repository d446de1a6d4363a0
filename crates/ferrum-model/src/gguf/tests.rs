use super::*;
use proptest::prelude::*;

fn sample_image() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String("llama".into()))
        .meta("llama.block_count", Value::U32(2))
        .meta("llama.rope.freq_base", Value::F32(10000.0))
        .meta(
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
        )
        .meta("flag", Value::Bool(true))
        .meta("big", Value::I64(-5))
        .tensor("w", &[32, 2], GgmlType::Q8_0, vec![7u8; 68])
        .tensor("n", &[3], GgmlType::F32, vec![1u8; 12]);
    w.to_bytes()
}

#[test]
fn round_trips_metadata_and_tensors() {
    let f = GgufFile::from_vec(sample_image()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 10000.0);
    assert_eq!(f.get_array("tokenizer.ggml.tokens").unwrap().len(), 2);
    assert_eq!(f.get("big").unwrap().as_i64(), Some(-5));
    assert!(
        f.get_u64("big").is_err(),
        "a negative value is not an unsigned integer"
    );
    let w = f.tensor("w").unwrap();
    assert_eq!((w.row_len(), w.n_rows(), w.size), (32, 2, 68));
    assert!(f.tensor_data(w).iter().all(|&b| b == 7));
    let n = f.tensor("n").unwrap();
    assert_eq!(f.tensor_data(n).len(), 12);
}

#[test]
fn wrong_magic_is_a_clear_error() {
    let mut img = sample_image();
    img[0] = b'X';
    let e = GgufFile::from_vec(img).unwrap_err();
    assert!(e.msg.contains("not a GGUF file"), "{e}");
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let img = sample_image();
    for len in 0..img.len() - 31 {
        let r = GgufFile::from_vec(img[..len].to_vec());
        assert!(r.is_err(), "truncated to {len} bytes parsed");
    }
}

#[test]
fn tensor_past_eof_is_reported() {
    let mut w = GgufWriter::new();
    w.tensor("w", &[32, 2], GgmlType::Q8_0, vec![0u8; 68]);
    let mut img = w.to_bytes();
    img.truncate(img.len() - 40);
    let e = GgufFile::from_vec(img).unwrap_err();
    assert!(e.msg.contains("past the end"), "{e}");
}

#[test]
fn absurd_counts_are_rejected_before_allocating() {
    let mut img = b"GGUF".to_vec();
    img.extend_from_slice(&3u32.to_le_bytes());
    img.extend_from_slice(&u64::MAX.to_le_bytes());
    img.extend_from_slice(&u64::MAX.to_le_bytes());
    let e = GgufFile::from_vec(img).unwrap_err();
    assert!(e.msg.contains("absurd"), "{e}");
}

#[test]
fn huge_string_and_array_lengths_are_rejected() {
    let mut img = b"GGUF".to_vec();
    img.extend_from_slice(&3u32.to_le_bytes());
    img.extend_from_slice(&0u64.to_le_bytes());
    img.extend_from_slice(&1u64.to_le_bytes());
    img.extend_from_slice(&1u64.to_le_bytes());
    img.push(b'k');
    img.extend_from_slice(&9u32.to_le_bytes()); // array
    img.extend_from_slice(&8u32.to_le_bytes()); // of strings
    img.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
    img.extend_from_slice(&[0u8; 64]);
    assert!(GgufFile::from_vec(img)
        .unwrap_err()
        .msg
        .contains("past the end"));
}

#[test]
fn unsupported_version_and_type_are_errors() {
    let mut img = sample_image();
    img[4] = 1;
    assert!(GgufFile::from_vec(img).unwrap_err().msg.contains("version"));
    let mut w = GgufWriter::new();
    w.tensor("w", &[32], GgmlType::Q8_0, vec![0u8; 34]);
    let mut img = w.to_bytes();
    // The type id follows name (8 + 1), n_dims (4), one dim (8).
    let ty_at = 24 + 8 + 1 + 4 + 8;
    img[ty_at] = 7; // Q5_0's id, retired and unsupported here
    assert!(GgufFile::from_vec(img).is_err());
}

#[test]
fn misaligned_offset_and_partial_block_rows_are_errors() {
    let mut w = GgufWriter::new();
    w.tensor("w", &[33], GgmlType::F32, vec![0u8; 132]);
    assert!(
        GgufFile::from_vec(w.to_bytes()).is_ok(),
        "f32 rows need no block alignment"
    );
    let mut w = GgufWriter::new();
    w.tensor("w", &[33], GgmlType::Q8_0, vec![0u8; 68]);
    assert!(GgufFile::from_vec(w.to_bytes())
        .unwrap_err()
        .msg
        .contains("block size"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// Random byte flips and cuts in a valid image never panic; they parse or give an error.
    #[test]
    fn hostile_mutations_never_panic(
        flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..8),
        cut in 0usize..500,
    ) {
        let mut img = sample_image();
        for (at, b) in flips {
            if at < img.len() { img[at] = b; }
        }
        img.truncate(cut.max(1).min(img.len()));
        if let Ok(f) = GgufFile::from_vec(img) {
            for t in f.tensors.clone() {
                let _ = f.tensor_data(&t);
            }
        }
    }

    /// Arbitrary bytes after a valid magic never panic.
    #[test]
    fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut img = b"GGUF\x03\x00\x00\x00".to_vec();
        img.extend(tail);
        let _ = GgufFile::from_vec(img);
    }
}
