"""The project's own small example user, written for workbench (no external data needed).

A headline writer with a recognisable house style: every headline is a "Why ..."
question followed by a practical promise in parentheses. The query is a new
article; a model that picks up the style from the history should write a
"Why ... (And ...)" headline for it, a generic model usually will not.
"""

from __future__ import annotations

EXAMPLE_USER: dict = {
    "user_id": "example-maya",
    "task": "lamp4",
    "profile": [
        {
            "id": "maya-1",
            "text": "City apartments waste more food than suburban homes, a new survey finds, largely because "
            "small fridges push people to shop often and buy on impulse.",
            "title": "Why Your Tiny Fridge Is Making You Waste Food (And 3 Fixes That Work)",
        },
        {
            "id": "maya-2",
            "text": "Farmers markets are adding winter hours as more shoppers look for local produce year-round, "
            "even when the choice is mostly roots and greens.",
            "title": "Why Winter Farmers Markets Are Worth The Cold (And What To Buy There)",
        },
        {
            "id": "maya-3",
            "text": "Restaurants are experimenting with root-to-leaf menus that use carrot tops, broccoli stems "
            "and other parts usually thrown away.",
            "title": "Why Chefs Are Cooking The Parts You Throw Away (And How To Try It At Home)",
        },
        {
            "id": "maya-4",
            "text": "Reusable beeswax wraps have become a popular replacement for plastic cling film, but they "
            "need the right care to last.",
            "title": "Why Beeswax Wraps Keep Failing You (And How To Make Them Last A Year)",
        },
    ],
    "query": "Composting in a small apartment is easier than most people think: a sealed countertop bin, "
    "a bag of dry leaves and a weekly drop-off point are enough to keep scraps out of the trash.",
    "gold": "Why Apartment Composting Is Easier Than You Think (And How To Start This Week)",
}
