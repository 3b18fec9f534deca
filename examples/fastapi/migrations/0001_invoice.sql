CREATE TABLE invoice (
    id       serial PRIMARY KEY,
    customer varchar(200) NOT NULL,
    total    numeric(12, 2) NOT NULL,
    closed   boolean NOT NULL DEFAULT false
);
