//! The test broker helper: finds or starts a Kafka broker, creates topics
//! with the partitions asked for, and records go through it.

use hb_testkit::broker::{create_topic, delete_topics, test_broker, unique_topic};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use std::time::{Duration, Instant};

#[tokio::test]
async fn the_test_broker_answers_and_carries_records_of_a_fresh_topic() {
    let brokers = test_broker().await.expect("a test broker");
    let topic = unique_topic("hb-test-broker");
    create_topic(&brokers, &topic, 3).await.expect("topic");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for i in 0..30 {
        let key = format!("key-{i}");
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload("x"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(err, _)| err)
            .expect("acked");
    }

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", unique_topic("hb-test-broker-group"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let (mut seen, mut partitions) = (0, std::collections::HashSet::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen < 30 && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            partitions.insert(message.expect("record").partition());
            seen += 1;
        }
    }
    assert_eq!(seen, 30, "every record read back");
    assert!(partitions.len() > 1, "keys spread over the 3 partitions");
    // Clients of a topic go before it: a metadata answer for a deleted
    // topic crashes librdkafka on tansu 0.6 (SIGSEGV in the metadata cache).
    drop((consumer, producer));
    delete_topics(&brokers, &[&topic]).await;
}

#[tokio::test]
async fn unique_topics_differ() {
    assert_ne!(unique_topic("t"), unique_topic("t"));
}
