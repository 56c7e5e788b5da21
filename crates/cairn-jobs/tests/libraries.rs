//! Libraries and the objects they hold: listing and emptiness come from the library→object
//! index, which a store made before that index existed gets built on open.

mod common;

use cairn_core::ErrorKind;
use cairn_core::ObjectId;
use cairn_jobs::records::{lib_object_key, CF_ENGINE, CF_LIB_OBJECTS};
use cairn_jobs::Engine;

fn ids(e: &Engine, lib: &cairn_core::LibraryId) -> Vec<String> {
    let mut v: Vec<String> = e
        .objects(lib)
        .unwrap()
        .iter()
        .map(|o| o.id.to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn a_library_lists_only_its_objects_and_is_deleted_only_when_empty() {
    let dir = tempfile::tempdir().unwrap();
    let e = common::small_engine(dir.path());
    let a = e.create_library("a").unwrap().id;
    let b = e.create_library("b").unwrap().id;
    let mut in_a: Vec<String> = (0..3)
        .map(|_| e.create_object(&a).unwrap().0.id.to_string())
        .collect();
    in_a.sort();
    let in_b = e.create_object(&b).unwrap().0.id;
    assert_eq!(ids(&e, &a), in_a);
    assert_eq!(ids(&e, &b), vec![in_b.to_string()]);

    let err = e.delete_library(&b).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    e.delete_object(&in_b).unwrap();
    assert!(ids(&e, &b).is_empty());
    e.delete_library(&b).unwrap();
    assert_eq!(ids(&e, &a), in_a, "the other library is untouched");
    assert_eq!(
        e.store().index().scan(CF_LIB_OBJECTS, &[]).count(),
        3,
        "no index entry outlives its object"
    );
}

#[test]
fn a_store_without_the_index_gets_it_built_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (lib, objs) = {
        let e = common::small_engine(dir.path());
        let lib = e.create_library("old").unwrap().id;
        let mut objs: Vec<String> = (0..4)
            .map(|_| e.create_object(&lib).unwrap().0.id.to_string())
            .collect();
        objs.sort();
        // As a store written before the index existed: no entries, no marker.
        let idx = e.store().index();
        let mut b = idx.batch();
        for r in idx.scan(CF_LIB_OBJECTS, &[]) {
            b.delete(CF_LIB_OBJECTS, &r.unwrap().0);
        }
        b.delete(CF_ENGINE, b"lib_objects_built");
        e.store().commit(b).unwrap();
        assert!(ids(&e, &lib).is_empty(), "the listing reads the index");
        (lib, objs)
    };
    let e = common::small_engine(dir.path());
    assert_eq!(ids(&e, &lib), objs);
    let err = e.delete_library(&lib).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
}

#[test]
fn fsck_reports_a_library_index_that_disagrees_and_repair_rewrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = common::small_engine(dir.path());
    let lib = e.create_library("l").unwrap().id;
    let kept = e.create_object(&lib).unwrap().0.id;
    let lost = e.create_object(&lib).unwrap().0.id;
    assert!(e.fsck().unwrap().is_clean());
    // One entry lost, one naming an object that does not exist.
    let idx = e.store().index();
    let mut b = idx.batch();
    b.delete(CF_LIB_OBJECTS, &lib_object_key(&lib, &lost));
    b.put(
        CF_LIB_OBJECTS,
        &lib_object_key(&lib, &ObjectId::new([9; 20])),
        &[],
    );
    e.store().commit(b).unwrap();

    let r = e.fsck().unwrap();
    assert!(!r.is_clean());
    assert_eq!(r.library_index.len(), 2, "{:?}", r.library_index);
    assert!(r.corrupt_records.is_empty());
    assert_eq!(ids(&e, &lib).len(), 1, "plain fsck changes nothing");

    let r = e.fsck_repair().unwrap();
    assert!(r.is_clean(), "{r:?}");
    let mut want = vec![kept.to_string(), lost.to_string()];
    want.sort();
    assert_eq!(ids(&e, &lib), want);
    assert!(e.fsck().unwrap().is_clean());
}

#[test]
fn deleting_an_object_drops_its_drafts_and_no_others() {
    use cairn_jobs::records::CF_DRAFTS;
    let dir = tempfile::tempdir().unwrap();
    let e = common::small_engine(dir.path());
    let lib = e.create_library("l").unwrap().id;
    let (x, x_first) = e.create_object(&lib).unwrap();
    let (y, y_first) = e.create_object(&lib).unwrap();
    let x_second = e.open_draft(&x.id).unwrap();
    let y_second = e.open_draft(&y.id).unwrap();
    e.delete_object(&x.id).unwrap();
    for d in [&x_first, &x_second] {
        let err = e.draft(&d.token).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    }
    for d in [&y_first, &y_second] {
        assert_eq!(e.draft(&d.token).unwrap().token, d.token);
    }
    assert_eq!(e.store().index().scan(CF_DRAFTS, &[]).count(), 2);
}
